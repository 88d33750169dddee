"""Intake through the real HTTP API (TestClient), on SQLite and PostgreSQL: what cannot be
encoded is refused with a 422 naming the field and nothing stored; the channel comes from the
request and the contact's choices; intake's decisions are events like any other; one resend
rule, in one wording, wherever it is shown."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import test_api
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from test_api import MESSAGE, counts

from postwarden.domain import status
from postwarden.domain.status import Kind
from postwarden.store import accounts, recorder, suppression
from postwarden.store import tables as t

client = test_api.client  # the same fixtures as test_api's
auth = test_api.auth
post_auth = test_api.post_auth

BROADCAST = {"from": "app@acme.test", "subject": "News", "text": "hi", "category": "news"}


def _post(client: TestClient, path: str, payload: Any, headers: dict[str, str]) -> Any:
    """POST ``payload`` as JSON with ``\\uXXXX`` escapes, the only way a lone surrogate
    travels in JSON (its UTF-8 does not exist)."""
    return client.post(
        path,
        content=json.dumps(payload).encode(),
        headers=headers | {"Content-Type": "application/json"},
    )


UNENCODABLE = [
    ("subject", {"subject": "Hi\u2028Bcc: v@example.test"}, "U+2028"),
    ("subject", {"subject": "Hi\u2029there"}, "U+2029"),
    ("subject", {"subject": "Hi\x85there"}, "U+0085"),
    ("subject", {"subject": "Hi\x00there"}, "U+0000"),
    ("subject", {"subject": "Hi\x1bthere"}, "U+001B"),
    ("subject", {"subject": "Hi\x7fthere"}, "U+007F"),
    ("subject", {"subject": "Hi\ud83dthere"}, "U+D83D"),
    ("from", {"from": "Ann\u2028Smith <app@acme.test>"}, "U+2028"),
    ("to", {"to": "bob\x00@example.test"}, "U+0000"),
    ("headers.Reply-To", {"headers": {"Reply-To": "a@b.test\x85Bcc: v@example.test"}}, "U+0085"),
    ("headers.X-Campaign", {"headers": {"X-Campaign": "\udc00"}}, "U+DC00"),
    (
        "attachments.0.filename",
        {"attachments": [{"filename": "a\u2029.pdf", "content_base64": ""}]},
        "U+2029",
    ),
    ("text", {"text": "caf\udce9"}, "U+DCE9"),
    ("text", {"text": "a\x00b"}, "U+0000"),
    ("html", {"html": "<p>\ud800</p>"}, "U+D800"),
    ("metadata", {"metadata": {"order\ud800": 1}}, "U+D800"),
    ("metadata", {"metadata": {"order": "\udfff"}}, "U+DFFF"),
    ("idempotency_key", {"idempotency_key": "k\ud800"}, "U+D800"),
]


@pytest.mark.parametrize(("field", "patch", "code"), UNENCODABLE)
def test_a_message_that_cannot_be_encoded_is_refused(
    client: TestClient,
    post_auth: dict[str, str],
    engine: Engine,
    field: str,
    patch: dict[str, Any],
    code: str,
) -> None:
    response = _post(client, "/v1/messages", MESSAGE | patch, post_auth)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"{field}: ") and code in detail
    assert counts(engine) == (0, 0, 0)


@pytest.mark.parametrize(
    ("field", "patch", "code"),
    [
        ("subject", {"subject": "News\u2028Bcc: v@example.test"}, "U+2028"),
        (
            "recipients.1.email",
            {"recipients": [{"email": "a@x.test"}, {"email": "b\x85@x"}]},
            "U+0085",
        ),
        (
            "recipients.0.metadata",
            {"recipients": [{"email": "a@x", "metadata": {"k": ["\ud800"]}}]},
            "U+D800",
        ),
        ("text", {"text": "\x00"}, "U+0000"),
    ],
)
def test_a_broadcast_that_cannot_be_encoded_is_refused(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
    field: str,
    patch: dict[str, Any],
    code: str,
) -> None:
    payload = BROADCAST | {"recipients": [{"email": "a@x.test"}]} | patch
    response = _post(client, "/v1/broadcasts", payload, auth)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"{field}: ") and code in detail
    assert counts(engine) == (0, 0, 0)


@pytest.mark.parametrize(
    ("field", "patch"),
    [("name", {"name": "Ann\u2028"}), ("preferences", {"preferences": {"news\ud800": ["email"]}})],
)
def test_a_contact_that_cannot_be_encoded_is_refused(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
    field: str,
    patch: dict[str, Any],
) -> None:
    response = _post(client, "/v1/contacts", {"email": "ann@example.test"} | patch, auth)
    assert response.status_code == 422 and response.json()["detail"].startswith(f"{field}: ")
    with engine.connect() as conn:
        assert conn.scalar(select(t.contacts.c.id)) is None


def test_text_that_can_be_encoded_is_kept_as_given(
    client: TestClient,
    auth: dict[str, str],
    post_auth: dict[str, str],
) -> None:
    given = {
        "from": "Zoë Grüße <app@acme.test>",
        "subject": "Tab\tand 日本語 and \U0001f600",
        "text": "Line one\u2028line two\r\nand a\x0cform feed",  # a body may hold them
        "headers": {"X-Campaign": "été\t2026"},
        "metadata": {"clé": "valeur ✓"},
    }
    response = _post(client, "/v1/messages", MESSAGE | given, post_auth)
    assert response.status_code == 202, response.text
    stored = client.get(f"/v1/messages/{response.json()['id']}", headers=auth).json()
    assert stored["subject"] == given["subject"] and stored["metadata"] == given["metadata"]


# region channels


@pytest.mark.parametrize(
    ("channel", "words"),
    [("sms", "SMS is not configured"), ("fax", "unknown channel 'fax'")],
)
def test_a_channel_that_is_not_configured_is_refused(
    client: TestClient,
    auth: dict[str, str],
    post_auth: dict[str, str],
    engine: Engine,
    channel: str,
    words: str,
) -> None:
    message = client.post("/v1/messages", json=MESSAGE | {"channel": channel}, headers=post_auth)
    broadcast = client.post(
        "/v1/broadcasts",
        json=BROADCAST | {"channel": channel, "recipients": [{"email": "a@x.test"}]},
        headers=auth,
    )
    for response in (message, broadcast):
        assert response.status_code == 422 and words in response.json()["detail"]
    assert counts(engine) == (0, 0, 0)


def test_email_named_or_not_is_the_channel(
    client: TestClient,
    auth: dict[str, str],
    post_auth: dict[str, str],
) -> None:
    named = client.post("/v1/messages", json=MESSAGE | {"channel": "email"}, headers=post_auth)
    unnamed = client.post("/v1/messages", json=MESSAGE, headers=post_auth)
    for response in (named, unnamed):
        assert response.status_code == 202
        stored = client.get(f"/v1/messages/{response.json()['id']}", headers=auth).json()
        assert stored["channel"] == "email"


def _contact(client: TestClient, auth: dict[str, str], **body: Any) -> int:
    response = client.post("/v1/contacts", json=body, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("contact", "channel", "outcome"),
    [
        ({"email": "a@x.test"}, None, "pending"),
        ({"email": "a@x.test", "preferences": {"*": ["sms", "email"]}}, None, "pending"),
        ({"email": "a@x.test", "preferences": {"news": ["email"], "*": []}}, "email", "pending"),
        (
            {"email": "a@x.test", "preferences": {"news": ["sms"]}},
            None,
            "the contact opted in only to SMS for 'news', which this Postwarden does not send",
        ),
        (
            {"email": "a@x.test", "preferences": {"news": ["sms"]}},
            "email",
            "the contact did not opt in to email for 'news'",
        ),
        (
            {"email": "a@x.test", "preferences": {"*": []}},
            None,
            "the contact opted out of every channel for 'news'",
        ),
        ({"phone": "+15555550100"}, None, "the contact has no email address"),
        ({"phone": "+15555550100"}, "email", "the contact has no email address"),
    ],
)
def test_the_contacts_choice_decides_the_channel(
    client: TestClient,
    auth: dict[str, str],
    contact: dict[str, Any],
    channel: str | None,
    outcome: str,
) -> None:
    contact_id = _contact(client, auth, **contact)
    payload = BROADCAST | {"recipients": [{"contact_id": contact_id}]}
    if channel:
        payload["channel"] = channel
    response = client.post("/v1/broadcasts", json=payload, headers=auth)
    assert response.status_code == 202, response.text
    (item,) = client.get("/v1/messages", headers=auth).json()["items"]
    assert item["channel"] == "email"
    if outcome == "pending":
        assert item["status"] == "pending" and item["to"] == "a@x.test"
    else:
        assert (item["status"], item["reason"], item["detail"]) == (
            "no_channel",
            "no_channel",
            outcome,
        )


def test_a_recipient_without_an_address_has_no_channel(
    client: TestClient, auth: dict[str, str]
) -> None:
    payload = BROADCAST | {"recipients": [{"email": ""}]}
    assert client.post("/v1/broadcasts", json=payload, headers=auth).status_code == 202
    (item,) = client.get("/v1/messages", headers=auth).json()["items"]
    assert (item["status"], item["detail"]) == ("no_channel", "no address was given")


# endregion
# region intake's decisions are events


def _events(engine: Engine, message_id: int) -> list[tuple[Any, ...]]:
    e = t.events
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(e.c.kind, e.c.source, e.c.status_after, e.c.reason, e.c.detail)
                .where(e.c.message_id == message_id)
                .order_by(e.c.id)
            )
        ]


def test_each_intake_decision_is_one_event(
    client: TestClient,
    auth: dict[str, str],
    post_auth: dict[str, str],
    engine: Engine,
    account_key: tuple[accounts.Account, str],
) -> None:
    with engine.begin() as conn:
        suppression.suppress(
            conn, account_key[0].id, "gone@example.test", reason="userunknown", source="test"
        )
    dropped = client.post(
        "/v1/messages", json=MESSAGE | {"to": "gone@example.test"}, headers=post_auth
    )
    pending = client.post("/v1/messages", json=MESSAGE, headers=post_auth)
    keyed = client.post(
        "/v1/messages",
        json=MESSAGE | {"to": "gone@example.test", "idempotency_key": "k1"},
        headers=post_auth,
    )
    broadcast = client.post(
        "/v1/broadcasts",
        json=BROADCAST | {"recipients": [{"email": "a@x.test"}, {"email": "A@x.test"}]},
        headers=auth,
    ).json()["id"]
    detail = "gone@example.test is suppressed: userunknown"
    for response in (dropped, keyed):
        assert _events(engine, response.json()["id"]) == [
            ("dropped", "intake", "dropped", "suppressed", detail)
        ]
    assert _events(engine, pending.json()["id"]) == []
    items = client.get(f"/v1/messages?broadcast={broadcast}", headers=auth).json()["items"]
    by_status = {i["status"]: i["id"] for i in items}
    assert _events(engine, by_status["duplicate"]) == [
        (
            "duplicate",
            "intake",
            "duplicate",
            "duplicate",
            "a@x.test appears earlier in this broadcast",
        )
    ]
    assert _events(engine, by_status["pending"]) == []


def test_the_recorder_refuses_a_fact_that_is_no_intake_decision(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="not an intake decision"):
        recorder.record_decisions(conn, [recorder.Fact(1, Kind.DELIVERED, recorder.INTAKE)])


# endregion
# region one resend rule


def _record(engine: Engine, message_id: int, *kinds: Kind, **evidence: Any) -> None:
    with engine.begin() as conn:
        recorder.record(
            conn,
            [recorder.Fact(message_id, kind, "test", **evidence) for kind in kinds],
            policy=suppression.Policy(),
        )


def test_a_deferred_message_is_not_resent_and_cannot_be_cancelled(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
) -> None:
    message_id = client.post("/v1/messages", json=MESSAGE, headers=auth).json()["id"]
    _record(engine, message_id, Kind.ATTEMPT, Kind.DEFERRED, reason="mailboxfull")
    response = client.post(f"/v1/messages/{message_id}/resend", headers=auth)
    assert response.status_code == 409
    words = "It is still deferred: wait until it is delivered or has failed."
    assert response.json()["detail"] == words
    assert client.get(f"/v1/messages/{message_id}", headers=auth).json()["resend_refusal"] == words
    assert status.resend_refusal("deferred", False) == words


def test_a_message_with_attachments_says_why_it_cannot_be_resent(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
) -> None:
    attachment = {"filename": "invoice.pdf", "content_base64": base64.b64encode(b"%PDF").decode()}
    message_id = client.post(
        "/v1/messages", json=MESSAGE | {"attachments": [attachment]}, headers=auth
    ).json()["id"]
    _record(engine, message_id, Kind.ATTEMPT)
    _record(engine, message_id, Kind.BOUNCED, reason="userunknown", hard=True)
    refused = client.post(f"/v1/messages/{message_id}/resend", headers=auth)
    detail = client.get(f"/v1/messages/{message_id}", headers=auth).json()
    words = status.resend_refusal("bounced", True)
    assert words is not None and "attachments" in words
    assert refused.status_code == 409 and refused.json()["detail"] == words
    assert detail["resend_refusal"] == words
    assert detail["explanation"]["next_step"].endswith(f"resend. {words}")


# endregion
