"""The HTTP providers' answers turned into verdicts (httpx.MockTransport: the mapping alone)."""

from __future__ import annotations

import httpx
import pytest

from postwarden.domain import sms
from postwarden.outbound.channels import base
from postwarden.outbound.channels.sms import provider, twilio, vonage

ITEM = base.Outgoing(7, "+12025550100", provider.SMS("hi", "+12025550199", sms.encode("hi")))


def _twilio(handler) -> twilio.TwilioProvider:  # type: ignore[no-untyped-def]
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    config = provider.parse_url("twilio://AC1:tok@api.twilio.test")
    return twilio.TwilioProvider(config, client, callback_url="https://pw.test/cb")


@pytest.mark.parametrize(
    ("status", "body", "headers", "outcome", "reason", "code", "retry"),
    [
        (
            201,
            {"sid": "SMabc", "status": "queued", "num_segments": "1"},
            {},
            "sent",
            None,
            None,
            None,
        ),
        (400, {"code": 21211, "message": "invalid To"}, {}, "failed", "userunknown", "21211", None),
        (400, {"code": 21610, "message": "unsubscribed"}, {}, "bounced", "filtered", "21610", None),
        (
            429,
            {"code": 20429, "message": "Too Many"},
            {"Retry-After": "3"},
            "deferred",
            "speeding",
            "20429",
            3.0,
        ),
        (401, {}, {}, "deferred", "securityerror", None, None),
        (503, {}, {}, "deferred", "systemerror", None, None),
        (400, {}, {}, "failed", "syntaxerror", None, None),
    ],
)
async def test_twilio_answers(status, body, headers, outcome, reason, code, retry) -> None:  # type: ignore[no-untyped-def]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body, headers=headers)

    verdict = await _twilio(handler).submit(ITEM)
    assert (verdict.outcome, verdict.reason, verdict.code, verdict.retry_after) == (
        outcome,
        reason,
        code,
        retry,
    )
    assert verdict.evidence is not None and verdict.evidence.via == "twilio"
    assert "tok" not in verdict.evidence.transcript  # the auth token is never kept
    form = dict(httpx.QueryParams(seen[0].content.decode()))
    assert form["To"] == "+12025550100" and form["From"] == "+12025550199"
    assert form["StatusCallback"].startswith("https://pw.test/cb?pw_m=7&pw_t=")
    if outcome == "sent":
        assert verdict.provider_message_id == "SMabc" and verdict.hard is None
    if outcome == "deferred":
        assert verdict.hard is False


async def test_twilio_unreachable_is_deferred() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    verdict = await _twilio(handler).submit(ITEM)
    assert verdict.outcome == "deferred" and "could not be reached" in verdict.detail


async def test_twilio_messaging_service_sender() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        assert form["MessagingServiceSid"] == "MG123" and "From" not in form
        return httpx.Response(201, json={"sid": "SM1", "status": "accepted"})

    item = base.Outgoing(1, "+12025550100", provider.SMS("hi", "MG123", sms.encode("hi")))
    assert (await _twilio(handler).submit(item)).detail == "accepted at Twilio"


@pytest.mark.parametrize(
    ("body", "outcome", "reason", "pid"),
    [
        (
            {
                "messages": [
                    {"status": "0", "message-id": "A1"},
                    {"status": "0", "message-id": "A2"},
                ]
            },
            "sent",
            None,
            "A1,A2",
        ),
        ({"messages": [{"status": "1", "error-text": "Throughput"}]}, "deferred", "speeding", None),
        (
            {"messages": [{"status": "15", "error-text": "Invalid sender"}]},
            "failed",
            "rejected",
            None,
        ),
        (
            {"messages": [{"status": "33", "error-text": "deactivated"}]},
            "bounced",
            "userunknown",
            None,
        ),
    ],
)
async def test_vonage_answers(body, outcome, reason, pid) -> None:  # type: ignore[no-untyped-def]
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(httpx.QueryParams(request.content.decode())))
        return httpx.Response(200, json=body)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    config = provider.parse_url("vonage://key:s3cret@rest.vonage.test?from=Acme")
    item = base.Outgoing(7, "+12025550100", provider.SMS("ж", "Acme", sms.encode("ж")))
    verdict = await vonage.VonageProvider(config, client, callback_url=None).submit(item)
    assert (verdict.outcome, verdict.reason, verdict.provider_message_id) == (outcome, reason, pid)
    assert (
        seen[0]["type"] == "unicode"
        and seen[0]["client-ref"] == "7"
        and seen[0]["to"] == "12025550100"
    )
    assert verdict.evidence is not None and "s3cret" not in verdict.evidence.transcript


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mailgun://a:b@h", "is not one of"),
        ("twilio://AC1@api.twilio.com", "needs twilio://USER:SECRET@host"),
        ("smpp://id:pw@host:notaport", "invalid port"),
    ],
)
def test_provider_url_problems(url: str, problem: str) -> None:
    from postwarden import errors

    with pytest.raises(errors.ConfigError, match=problem):
        provider.parse_url(url)


def test_provider_urls() -> None:
    smpp = provider.parse_url("smpp://system%40id:p%40ss@smsc.example:2776?source=Acme")
    assert (smpp.user, smpp.secret.get_secret_value(), smpp.port, smpp.sender) == (
        "system@id",
        "p@ss",
        2776,
        "Acme",
    )
    assert "p@ss" not in repr(smpp)
    assert provider.parse_url("twilio://AC:t@api.twilio.com").base_url == "https://api.twilio.com"
    assert provider.parse_url("twilio://AC:t@127.0.0.1:8080").base_url == "http://127.0.0.1:8080"
