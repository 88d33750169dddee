"""The email channel's judgement: every form an SMTP attempt ends in -> its :class:`Verdict`, the
relays' queue ids, and a message that cannot be built. No network: the attempts are written
here as the SMTP sender reports them (tests/integration/test_smtp_channel.py shows it does)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from postwarden.outbound.channels import base
from postwarden.outbound.channels.email import channel, compose
from postwarden.outbound.channels.email.smtp import Attempt

STARTED = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


def attempt(outcome: str, code: int | None, enhanced: str | None, text: str, **kw: Any) -> Attempt:
    fields: dict[str, Any] = {
        "message_id": 7,
        "outcome": outcome,
        "code": code,
        "enhanced": enhanced,
        "text": text,
        "remote": "192.0.2.1:25",
        "via": "mx",
        "transcript": "12:00:00.000 connect 192.0.2.1:25\n",
        "started_at": STARTED,
        "duration_ms": 42,
    }
    return Attempt(**(fields | kw))


def test_2xx_from_the_mx_is_delivered_with_its_evidence() -> None:
    v = channel.judge(attempt("accepted", 250, "2.0.0", "2.0.0 Ok: queued as 4XyZ"))
    assert (v.message_id, v.outcome, v.reason, v.hard) == (7, "delivered", None, None)
    assert (v.code, v.reply_code, v.detail) == ("2.0.0", 250, "250 2.0.0 Ok: queued as 4XyZ")
    assert v.provider_message_id is None, "an MX's queue id names nothing receipts will quote"
    assert v.evidence == base.Evidence(
        STARTED, 42, "mx", "192.0.2.1:25", "12:00:00.000 connect 192.0.2.1:25\n"
    )


def test_2xx_from_the_relay_is_sent_with_the_relays_id() -> None:
    v = channel.judge(attempt("accepted", 250, "2.0.0", "2.0.0 Ok: queued as 4XyZ", via="relay"))
    assert (v.outcome, v.provider_message_id, v.evidence and v.evidence.via) == (
        "sent",
        "4XyZ",
        "relay",
    )
    plain = channel.judge(attempt("accepted", 250, None, "Ok", via="relay"))
    assert (plain.outcome, plain.provider_message_id, plain.code) == ("sent", None, None)


@pytest.mark.parametrize(
    ("code", "enhanced", "text", "reason", "retry_after"),
    [
        (452, "4.2.2", "4.2.2 <full@x.test>: Mailbox full", "mailboxfull", None),
        (
            451,
            "4.7.1",
            "4.7.1 <g@x.test>: Recipient address rejected: Greylisted, try again in 5 minutes",
            "blocked",
            300,
        ),
        (421, "4.7.0", "4.7.0 Too many connections, slow down", "toomanyconn", None),
        (450, None, "Requested mail action not taken: mailbox unavailable", "userunknown", None),
    ],
)
def test_4xx_is_deferred_by_the_servers_words(
    code: int, enhanced: str | None, text: str, reason: str, retry_after: int | None
) -> None:
    v = channel.judge(attempt("temporary", code, enhanced, text))
    assert (v.outcome, v.hard, v.reply_code) == ("deferred", False, code)
    assert v.reason == reason
    assert v.code == (enhanced or str(code))
    assert v.detail == f"{code} {text}"
    assert v.retry_after == retry_after
    assert v.evidence is not None and v.evidence.transcript


@pytest.mark.parametrize(
    ("code", "enhanced", "text", "reason", "hard"),
    [
        (550, "5.1.1", "5.1.1 <u@x.test>: Recipient address rejected: User unknown",
         "userunknown", True),
        (550, "5.1.6", "5.1.6 The user has moved", "hasmoved", True),
        (552, "5.2.2", "5.2.2 Mailbox full", "mailboxfull", False),
        (554, "5.7.1", "5.7.1 Client host blocked using zen.spamhaus.org", "blocked", False),
        (550, "5.7.26", "5.7.26 Unauthenticated email is not accepted (DMARC)",
         "authfailure", False),
        (552, "5.3.4", "5.3.4 Message size exceeds fixed limit", "mesgtoobig", False),
        (554, None, "Transaction failed", "systemerror", False),
    ],
)  # fmt: skip
def test_5xx_is_bounced_hard_or_soft_by_reason(
    code: int, enhanced: str | None, text: str, reason: str, hard: bool
) -> None:
    v = channel.judge(attempt("permanent", code, enhanced, text))
    assert (v.outcome, v.reason, v.hard) == ("bounced", reason, hard)
    assert (v.code, v.reply_code) == (enhanced or str(code), code)


@pytest.mark.parametrize(
    "text",
    [
        "timed out after 10 s waiting for the greeting from 192.0.2.1:25",
        "timed out after 10 s connecting to 192.0.2.1:25",
        "connection refused by 192.0.2.1:25",
        "connection to 192.0.2.1:25 lost during DATA",
        "timed out after 120 s waiting for the reply to DATA",
        "DNS lookup for x.test timed out",
        "not attempted: connection lost",
    ],
)
def test_no_reply_at_all_is_a_network_error_in_its_words(text: str) -> None:
    """Issue 13 item 9: an MX that never answers is deferred as what it is, not "expired"
    (which is for retries run out, the dispatcher's call)."""
    v = channel.judge(attempt("temporary", None, "4.4.1", text))
    assert (v.outcome, v.reason, v.hard, v.reply_code) == ("deferred", "networkerror", False, None)
    assert v.detail == text and v.code == "4.4.1"


def test_a_failed_tls_handshake_is_failedstarttls() -> None:
    v = channel.judge(
        attempt("temporary", None, "4.4.1", "TLS with 192.0.2.1:587 failed during STARTTLS: x")
    )
    assert (v.outcome, v.reason) == ("deferred", "failedstarttls")


def test_a_refused_session_set_up_is_deferred_by_its_reply() -> None:
    """Greeting, EHLO or AUTH refused: temporary for the whole batch whatever the code."""
    v = channel.judge(
        attempt(
            "temporary",
            535,
            "5.7.8",
            "authentication with the relay 192.0.2.9:587 failed: 5.7.8 bad credentials",
            via="relay",
        )
    )
    assert (v.outcome, v.reply_code, v.hard) == ("deferred", 535, False)


@pytest.mark.parametrize(
    ("enhanced", "text", "reason", "hard"),
    [
        ("5.1.10", "the recipient domain does not accept mail (null MX)", "notaccept", True),
        ("5.1.2", "the recipient domain does not exist", "hostunknown", True),
        ("5.6.7", "the address is not ASCII and x does not offer SMTPUTF8", "contenterror", False),
    ],
)
def test_permanent_without_a_reply_is_postwardens_own_failure(
    enhanced: str, text: str, reason: str, hard: bool
) -> None:
    v = channel.judge(attempt("permanent", None, enhanced, text, remote=None))
    assert (v.outcome, v.reason, v.hard, v.code, v.reply_code) == (
        "failed",
        reason,
        hard,
        enhanced,
        None,
    )
    assert v.detail == text


def test_a_message_that_cannot_be_built_fails_alone_with_the_error() -> None:
    with pytest.raises(ValueError) as raised:
        compose.Composer().build(
            content_id=1,
            content=compose.Content("shop@x.test", "", "Line\u2028break", "hi", None),
            to="bob@x.test",
            token="t",
            message_id_domain="x.test",
        )
    v = channel.unbuildable(3, raised.value)
    assert (v.message_id, v.outcome, v.reason, v.hard, v.evidence) == (
        3,
        "failed",
        "contenterror",
        False,
        None,
    )
    assert v.detail == (
        "the message could not be built: the Subject header holds U+2028 (LINE SEPARATOR), "
        "a line break"
    )


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("2.0.0 Ok: queued as 4XyZ1234", "4XyZ1234"),  # Postfix, SendGrid
        ("2.0.0 Ok: queued as 4VfTb33MKqz9sQ5", "4VfTb33MKqz9sQ5"),  # Postfix long ids
        ("2.0.0 OK: queued as <202311241030.12345@smtp-relay.mailin.fr>",
         "202311241030.12345@smtp-relay.mailin.fr"),  # Brevo
        ("Ok 01010160d7de98d8-21e57d9a-JZho-416c-bbe1-8ebaAexample-000000",
         "01010160d7de98d8-21e57d9a-JZho-416c-bbe1-8ebaAexample-000000"),  # Amazon SES
        ("2.6.0 <20160724081126.59835@appveyor.com> [InternalId=725849473299, "
         "Hostname=CY4PR10MB1480.namprd10.prod.outlook.com] 9832 bytes in 0.332, 28.888 KB/sec "
         "Queued mail for delivery", "20160724081126.59835@appveyor.com"),  # Exchange / M365
        ("OK id=1tAbCd-000123-Xy", "1tAbCd-000123-Xy"),  # Exim
        ("2.0.0 OK  1700000000 d9443c01a7336-1dd2e1b4f3fsi1234567pla.123 - gsmtp",
         "d9443c01a7336-1dd2e1b4f3fsi1234567pla.123"),  # Google relay
        ("2.0.0 u3ABC123 Message accepted for delivery", "u3ABC123"),  # Sendmail
        ("2.0.0 Ok: relayed", None),
        ("Ok queued", None),
        ("Great success", None),  # Mailgun names none
        ("Ok", None),
    ],
)  # fmt: skip
def test_queue_id_of_each_relays_reply(reply: str, expected: str | None) -> None:
    assert channel.queue_id(reply) == expected


def test_an_overlong_queue_id_is_not_kept() -> None:
    assert channel.queue_id("Ok: queued as " + "a1" * 200) is None
