"""The SMS error table, provider states, receipt parsing and matching, webhook signatures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from postwarden.domain import classify, receipts
from postwarden.inbound.webhooks import guard, twilio, vonage

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# Every row of the table: (table, code) -> (cause, outcome at submission, hard, unsubscribed).
ROWS = [(t, c, cause) for (t, c), cause in receipts._CODES.items()]


@pytest.mark.parametrize(("table", "code", "cause"), ROWS)
def test_every_code_row_is_explained(table: str, code: str, cause: str) -> None:
    meaning = receipts.explain(table, code)
    assert meaning.cause == cause
    assert meaning.reason in classify.REASONS
    assert meaning.explanation.endswith(".") and meaning.next_step.endswith(".")
    # hard only for a definitive number failure, as STATUS.md decides it by the reason
    assert meaning.hard == (meaning.reason in ("userunknown", "notaccept") and cause != "unknown")
    assert not (meaning.hard and meaning.outcome == "deferred")
    assert meaning.unsubscribed == (cause == "unsubscribed")


@pytest.mark.parametrize(
    ("table", "code", "cause", "outcome", "hard"),
    [
        ("twilio", "30003", "unreachable", "bounced", False),
        ("twilio", "30005", "unknown_number", "bounced", True),
        ("twilio", "30006", "not_mobile", "bounced", True),
        ("twilio", "30007", "carrier_filtered", "bounced", False),
        ("twilio", "21610", "unsubscribed", "bounced", False),
        ("twilio", "21211", "invalid_number", "failed", True),
        ("twilio", "20429", "rate_limited", "deferred", False),
        ("twilio", "99999", "unknown", "bounced", False),
        ("vonage", "1", "rate_limited", "deferred", False),
        ("vonage", "4", "provider_account", "deferred", False),
        ("vonage", "15", "sender", "failed", False),
        ("vonage", "77", "provider_error", "deferred", False),
        ("vonage-dlr", "2", "unreachable", "bounced", False),
        ("vonage-dlr", "3", "unknown_number", "bounced", True),
        ("vonage-dlr", "9", "unsubscribed", "bounced", False),
        ("smpp", "0x00000058", "rate_limited", "deferred", False),
        ("smpp", 0x0B, "invalid_number", "failed", True),
        ("smpp", "0x00000400", "provider_error", "deferred", False),  # vendor-specific
        ("smpp-err", "001", "unknown_number", "bounced", True),
        ("smpp-err", "027", "unreachable", "bounced", False),
        ("smpp-err", "999", "unknown", "bounced", False),
    ],
)
def test_examples(table: str, code: str | int, cause: str, outcome: str, hard: bool) -> None:
    meaning = receipts.explain(table, code)
    assert (meaning.cause, meaning.outcome, meaning.hard) == (cause, outcome, hard)


def test_the_brief_s_plain_words() -> None:
    assert "suppress" in receipts.meaning("unknown_number").next_step
    assert "registration" in receipts.meaning("carrier_filtered").next_step
    assert receipts.meaning("carrier_filtered").reason == "blocked"
    assert "STOP" in receipts.meaning("unsubscribed").explanation
    assert receipts.meaning("expired").reason == "expired"


@pytest.mark.parametrize(
    ("table", "mapping"),
    [
        (
            receipts.TWILIO_STATES,
            {
                "queued": "sending",
                "accepted": "sending",
                "sent": "sent",
                "delivered": "delivered",
                "undelivered": "bounced",
                "failed": "bounced",
            },
        ),
        (
            receipts.VONAGE_STATES,
            {
                "accepted": "sent",
                "delivered": "delivered",
                "expired": "bounced",
                "failed": "bounced",
            },
        ),
        (
            receipts.SMPP_STATES,
            {
                "ACCEPTD": "sent",
                "ENROUTE": "sent",
                "DELIVRD": "delivered",
                "EXPIRED": "bounced",
                "UNDELIV": "bounced",
                "REJECTD": "bounced",
            },
        ),
    ],
)
def test_provider_states(table: dict[str, str], mapping: dict[str, str]) -> None:
    for word, state in mapping.items():
        assert table[word] == state


def test_expired_is_a_soft_bounce_everywhere() -> None:
    assert receipts.vonage_meaning("expired", "0").cause == "expired"
    assert receipts.smpp_meaning("EXPIRED", "000").cause == "expired"
    assert not receipts.smpp_meaning("EXPIRED", None).hard
    assert receipts.smpp_meaning("REJECTD", "000").cause == "carrier_filtered"
    assert receipts.twilio_meaning("canceled", None).cause == "deleted"


# -- SMPP receipts ---------------------------------------------------------------------------
TEXT = (
    "id:0000065536 sub:001 dlvrd:000 submit date:2603011159 done date:2603011200 "
    "stat:UNDELIV err:001 text:Your code is 1234 ok"
)


def test_smpp_receipt_from_the_text() -> None:
    r = receipts.smpp_receipt(TEXT)
    assert r is not None
    assert (r.provider_message_id, r.state, r.status, r.code) == (
        "0000065536",
        "bounced",
        "UNDELIV",
        "001",
    )
    assert r.meaning is not None and r.meaning.cause == "unknown_number"
    assert r.occurred_at == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert r.raw["text"] == "Your code is 1234 ok"


def test_smpp_receipt_tlvs_win_over_the_text() -> None:
    r = receipts.smpp_receipt(TEXT, {"receipted_message_id": "10000", "message_state": 2})
    assert r is not None and (r.provider_message_id, r.state, r.status) == (
        "10000",
        "delivered",
        "DELIVRD",
    )


def test_smpp_receipt_upper_case_keys_and_missing_fields() -> None:
    r = receipts.smpp_receipt("ID:ab12 STAT:DELIVRD ERR:0 Text:hi id: 5")
    assert r is not None and (r.provider_message_id, r.state) == ("ab12", "delivered")
    assert receipts.smpp_receipt("stat:DELIVRD err:000") is None


@pytest.mark.parametrize(
    ("given_id", "forms"),
    [
        ("0000065536", ["65536", "10000", "415030"]),  # decimal receipt of the hex id 10000
        ("10000", ["10000", "2710", "65536"]),
        ("0A1B", ["a1b", "2587"]),
        ("00", ["0"]),
        ("msg-7", ["msg-7"]),
    ],
)
def test_id_forms(given_id: str, forms: list[str]) -> None:
    assert receipts.id_forms(given_id) == forms


def test_match_pairs_by_any_id_form_and_keeps_the_unmatched() -> None:
    by_hex = receipts.smpp_receipt("id:0000065536 stat:DELIVRD err:000")
    foreign = receipts.smpp_receipt("id:777777 stat:DELIVRD err:000")
    ours = receipts.Receipt("vonage", "X", "delivered", "delivered", message_id=42)
    asked: list[list[str]] = []

    def lookup(ids: list[str]) -> dict[str, int]:
        asked.append(list(ids))
        return {"10000": 7}

    assert by_hex is not None and foreign is not None
    matched, unmatched = receipts.match([by_hex, foreign, ours], lookup)
    assert matched == [(7, by_hex), (42, ours)]
    assert unmatched == [foreign]
    assert len(asked) == 1 and "10000" in asked[0] and "777777" in asked[0]


# -- Twilio ----------------------------------------------------------------------------------
params_st = st.dictionaries(
    st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=12),
    st.text(max_size=30),
    max_size=8,
)


@given(
    params_st,
    st.sampled_from(
        [
            "https://pw.example/v1/webhooks/twilio?pw_m=1&pw_t=2",
            "http://127.0.0.1:8025/x",
            "https://a.example:8443/cb",
        ]
    ),
)
def test_twilio_signature_is_twilio_s_own_algorithm(params: dict[str, str], url: str) -> None:
    ours = receipts.twilio_signature("auth-token", url, params)
    validator = RequestValidator("auth-token")
    assert ours == validator.compute_signature(url, params)
    assert validator.validate(url, params, ours)


def _callback(
    url_base: str = "https://pw.example/v1/webhooks/twilio", issued: datetime = NOW
) -> tuple[str, dict[str, str], dict[str, str]]:
    url = receipts.callback_url(url_base, 42, issued)
    params = {
        "MessageSid": "SM" + "a" * 32,
        "MessageStatus": "undelivered",
        "ErrorCode": "30005",
        "To": "+12025550101",
        "RawDlrDoneDate": "2603011201",
    }
    headers = {
        "X-Twilio-Signature": RequestValidator("tok").compute_signature(url, params),
        "I-Twilio-Idempotency-Token": "idem-1",
    }
    return url, params, headers


def _verify(
    url: str, params: dict[str, str], headers: dict[str, str], replays: guard.Replays | None = None
) -> guard.Refused | None:
    return twilio.verify(
        "tok",
        url,
        params,
        headers,
        now=NOW + timedelta(minutes=1),
        max_age=timedelta(days=7),
        replays=replays or guard.Replays(timedelta(days=7)),
    )


def test_twilio_callback_accepted_and_read() -> None:
    url, params, headers = _callback()
    assert _verify(url, params, headers) is None
    r = twilio.status(url, params)
    assert r is not None and r.message_id == 42 and r.state == "bounced"
    assert r.meaning is not None and r.meaning.cause == "unknown_number"
    assert r.occurred_at == datetime(2026, 3, 1, 12, 1, tzinfo=UTC)


def test_twilio_callback_with_or_without_the_default_port() -> None:
    url, params, headers = _callback("https://pw.example:443/cb")
    assert _verify(url.replace(":443", ""), params, headers) is None


@pytest.mark.parametrize("tamper", ["params", "url", "token", "header"])
def test_twilio_forged_callbacks_are_refused(tamper: str) -> None:
    url, params, headers = _callback()
    if tamper == "params":
        params["MessageStatus"] = "delivered"
    elif tamper == "url":
        url = url.replace("pw_m=42", "pw_m=43")
    elif tamper == "token":
        headers["X-Twilio-Signature"] = RequestValidator("other").compute_signature(url, params)
    else:
        del headers["X-Twilio-Signature"]
    refused = _verify(url, params, headers)
    assert refused is not None and refused.why == ("unsigned" if tamper == "header" else "forged")


def test_twilio_stale_callbacks_are_refused() -> None:
    url, params, headers = _callback(issued=NOW - timedelta(days=8))
    refused = _verify(url, params, headers)
    assert refused is not None and refused.why == "stale"


def test_twilio_replayed_callbacks_are_refused() -> None:
    url, params, headers = _callback()
    replays = guard.Replays(timedelta(days=7))
    assert _verify(url, params, headers, replays) is None
    refused = _verify(url, params, dict(headers), replays)
    assert refused is not None and refused.why == "replayed"
    del headers["I-Twilio-Idempotency-Token"]  # without the token: the same signed request
    assert _verify(url, params, headers, replays) is None
    assert _verify(url, params, headers, replays).why == "replayed"  # type: ignore[union-attr]


def test_replays_forget_after_the_window_and_beyond_capacity() -> None:
    replays = guard.Replays(timedelta(seconds=10), capacity=2)
    assert replays.first_time("a", NOW) and not replays.first_time("a", NOW)
    assert replays.first_time("a", NOW + timedelta(seconds=11))
    assert replays.first_time("b", NOW + timedelta(seconds=11))
    assert replays.first_time("c", NOW + timedelta(seconds=11))
    assert len(replays._seen) <= 2


def test_twilio_reply_keywords() -> None:
    stop = twilio.reply(
        {"From": "+12025550104", "To": "+1555", "Body": "Stop", "MessageSid": "SM1"}
    )
    assert stop is not None and stop.keyword == "stop"
    opt = twilio.reply({"From": "+1", "Body": "arrête", "OptOutType": "STOP"})
    assert opt is not None and opt.keyword == "stop"
    assert twilio.reply({"Body": "x"}) is None


def test_twilio_status_states() -> None:
    url = "https://pw.example/cb"
    sent = twilio.status(url, {"MessageSid": "SM1", "MessageStatus": "sent"})
    assert sent is not None and sent.state == "sent" and sent.message_id is None
    assert twilio.status(url, {"MessageStatus": "sent"}) is None


# -- Vonage ----------------------------------------------------------------------------------
def _dlr(secret: str = "sig-secret", method: str = "sha256", at: datetime = NOW) -> dict[str, str]:
    params = {
        "msisdn": "12025550102",
        "to": "Acme",
        "messageId": "0A00000000000001",
        "status": "expired",
        "err-code": "2",
        "client-ref": "42",
        "scts": "2603011200",
        "timestamp": str(int(at.timestamp())),
        "nonce": "n-1",
    }
    params["sig"] = receipts.vonage_signature(secret, method, params)
    return params


def test_vonage_signature_known_value() -> None:
    # md5hash: md5("&a=1&b=x_y" + secret), with "&" and "=" in values replaced by "_"
    import hashlib

    expected = hashlib.md5(b"&a=1&b=x_y_zsecret").hexdigest()
    assert (
        receipts.vonage_signature("secret", "md5hash", {"b": "x&y=z", "a": "1", "sig": "?"})
        == expected
    )


@pytest.mark.parametrize("method", sorted(receipts.VONAGE_METHODS))
def test_vonage_signed_receipts(method: str) -> None:
    params = _dlr(method=method)
    replays = guard.Replays(timedelta(minutes=10))
    ok = vonage.verify(
        "sig-secret", method, params, now=NOW, max_skew=timedelta(minutes=5), replays=replays
    )
    assert ok is None
    replayed = vonage.verify(
        "sig-secret", method, params, now=NOW, max_skew=timedelta(minutes=5), replays=replays
    )
    assert replayed is not None and replayed.why == "replayed"
    forged = dict(params, status="delivered")
    bad = vonage.verify(
        "sig-secret", method, forged, now=NOW, max_skew=timedelta(minutes=5), replays=replays
    )
    assert bad is not None and bad.why == "forged"


def test_vonage_stale_and_unsigned_receipts() -> None:
    replays = guard.Replays(timedelta(minutes=10))
    old = _dlr(at=NOW - timedelta(hours=1))
    refused = vonage.verify(
        "sig-secret", "sha256", old, now=NOW, max_skew=timedelta(minutes=5), replays=replays
    )
    assert refused is not None and refused.why == "stale"
    unsigned = {k: v for k, v in _dlr().items() if k != "sig"}
    refused = vonage.verify(
        "sig-secret", "sha256", unsigned, now=NOW, max_skew=timedelta(minutes=5), replays=replays
    )
    assert refused is not None and refused.why == "unsigned"


def test_vonage_receipt_read() -> None:
    r = vonage.receipt(_dlr())
    assert r is not None and r.message_id == 42 and r.state == "bounced"
    assert r.meaning is not None and r.meaning.cause == "unreachable"  # err-code 2 says why
    assert r.occurred_at == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    stop = vonage.reply({"msisdn": "12025550104", "to": "Acme", "text": "STOP"})
    assert stop is not None and stop.from_number == "+12025550104" and stop.keyword == "stop"
