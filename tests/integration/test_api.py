"""The JSON API over real HTTP handling (TestClient), on SQLite and PostgreSQL.

Failure paths check what the caller sees (status code, message) and that nothing was stored.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from postwarden.domain import status
from postwarden.settings import Settings
from postwarden.store import accounts, recorder, suppression
from postwarden.store import tables as t
from postwarden.web.app import create_app

MESSAGE = {
    "from": "App <app@acme.test>",
    "to": "bob@example.test",
    "subject": "Hello",
    "text": "Hi Bob",
}


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings, engine, b"secret")) as client:
        yield client


@pytest.fixture
def auth(account_key: tuple[accounts.Account, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {account_key[1]}"}


@pytest.fixture(params=["route", "fast path"])
def post_auth(
    request: pytest.FixtureRequest, engine: Engine, account_key: tuple[accounts.Account, str]
) -> dict[str, str]:
    """The key for POST /v1/messages, either path: a key not seen yet goes through the FastAPI
    route; one authenticated within seconds is taken by ``api.MessageFastPath``."""
    if request.param == "fast path":
        with engine.connect() as conn:
            assert accounts.authenticate_cached(conn, account_key[1]) is not None
    return {"Authorization": f"Bearer {account_key[1]}"}


def counts(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.scalar(select(func.count()).select_from(table)) or 0
            for table in (t.messages, t.contents, t.events)
        )


def test_send_and_read_back(
    client: TestClient, auth: dict[str, str], post_auth: dict[str, str]
) -> None:
    response = client.post(
        "/v1/messages", json=MESSAGE | {"metadata": {"order": 42}}, headers=post_auth
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending"
    detail = client.get(f"/v1/messages/{body['id']}", headers=auth).json()
    assert detail["to"] == "bob@example.test"
    assert detail["status"] == "pending"
    assert detail["metadata"] == {"order": 42}
    assert detail["explanation"]["group"] == "waiting"
    assert detail["events"] == [] and detail["attempts"] == []


@pytest.mark.parametrize(
    ("payload", "raw", "code", "words"),
    [
        (None, b"{not json", 422, "JSON"),
        (MESSAGE | {"to": "bob@@example.test"}, None, 422, "not a valid email address"),
        (MESSAGE | {"to": "not-an-address"}, None, 422, "not a valid email address"),
        (MESSAGE | {"from": "app@acme.test\r\nBcc: victim@example.test"}, None, 422, "CR or LF"),
        (MESSAGE | {"subject": "Hi\r\nBcc: victim@example.test"}, None, 422, "header injection"),
        (
            MESSAGE | {"headers": {"Reply-To": "x@y.test\nBcc: v@example.test"}},
            None,
            422,
            "CR or LF",
        ),
        (MESSAGE | {"headers": {"Bcc": "v@example.test"}}, None, 422, "set by Postwarden"),
        ({k: v for k, v in MESSAGE.items() if k != "text"}, None, 422, "give text, html or both"),
        (MESSAGE | {"surprise": 1}, None, 422, "surprise"),
        (
            MESSAGE | {"attachments": [{"filename": "a.txt", "content_base64": "%%%"}]},
            None,
            422,
            "base64",
        ),
    ],
)
def test_bad_input_is_refused_and_nothing_is_stored(
    client: TestClient,
    post_auth: dict[str, str],
    engine: Engine,
    payload: Any,
    raw: bytes | None,
    code: int,
    words: str,
) -> None:
    before = counts(engine)
    if raw is not None:
        response = client.post(
            "/v1/messages", content=raw, headers=post_auth | {"Content-Type": "application/json"}
        )
    else:
        response = client.post("/v1/messages", json=payload, headers=post_auth)
    assert response.status_code == code, response.text
    assert words.lower() in response.json()["detail"].lower()
    assert counts(engine) == before


@pytest.fixture
def small_limit_client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    limited = settings.model_copy(update={"max_message_bytes": 1_000_000})
    with TestClient(create_app(limited, engine, b"secret")) as client:
        yield client


def test_oversized_body_is_refused(
    small_limit_client: TestClient, post_auth: dict[str, str], engine: Engine
) -> None:
    auth = post_auth
    big = base64.b64encode(b"x" * 1_200_000).decode()
    response = small_limit_client.post(
        "/v1/messages",
        json=MESSAGE | {"attachments": [{"filename": "big.bin", "content_base64": big}]},
        headers=auth,
    )
    assert response.status_code == 422
    assert "the limit is 1000000" in response.json()["detail"]
    assert counts(engine) == (0, 0, 0)
    response = small_limit_client.post(
        "/v1/messages", json=MESSAGE | {"text": "x" * 2_100_000}, headers=auth
    )
    assert response.status_code == 413
    assert "larger than 2000000 bytes" in response.json()["detail"]
    assert counts(engine) == (0, 0, 0)


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic abc", "Bearer "])
def test_unknown_key_is_401(client: TestClient, engine: Engine, header: str | None) -> None:
    response = client.post(
        "/v1/messages", json=MESSAGE, headers={"Authorization": header} if header else {}
    )
    assert response.status_code == 401
    assert response.json()["detail"]
    assert counts(engine) == (0, 0, 0)


def test_revoked_key_is_401(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
    account_key: tuple[accounts.Account, str],
) -> None:
    assert client.post("/v1/messages", json=MESSAGE, headers=auth).status_code == 202
    with engine.begin() as conn:
        accounts.revoke_key(conn, account_key[1])
    response = client.post("/v1/messages", json=MESSAGE, headers=auth)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_other_accounts_message_is_404(
    client: TestClient, auth: dict[str, str], engine: Engine
) -> None:
    mine = client.post("/v1/messages", json=MESSAGE, headers=auth).json()["id"]
    with engine.begin() as conn:
        _, other_key = accounts.create(conn, "other", "bounces.other.test")
    other = {"Authorization": f"Bearer {other_key}"}
    for method, path in [
        ("get", f"/v1/messages/{mine}"),
        ("post", f"/v1/messages/{mine}/cancel"),
        ("post", f"/v1/messages/{mine}/resend"),
    ]:
        response = client.request(method, path, headers=other)
        assert response.status_code == 404
        assert "bob@example.test" not in response.text
    assert client.get("/v1/messages", headers=other).json()["items"] == []


def test_idempotency_key_returns_the_first_message(
    client: TestClient, auth: dict[str, str], engine: Engine
) -> None:
    first = client.post(
        "/v1/messages", json=MESSAGE | {"idempotency_key": "order-42"}, headers=auth
    ).json()
    again = client.post(
        "/v1/messages", json=MESSAGE | {"idempotency_key": "order-42"}, headers=auth
    ).json()
    assert first == again
    assert counts(engine)[0] == 1


def test_broadcast_intake_decisions(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
    account_key: tuple[accounts.Account, str],
) -> None:
    account = account_key[0]
    with engine.begin() as conn:
        suppression.suppress(
            conn, account.id, "gone@example.test", reason="userunknown", source="test"
        )
        suppression.block(conn, account.id, "@blocked.test", actor="test")
    opted_out = client.post(
        "/v1/contacts",
        json={"email": "carol@example.test", "preferences": {"news": ["sms"]}},
        headers=auth,
    ).json()["id"]
    no_email = client.post("/v1/contacts", json={"phone": "+15555550100"}, headers=auth).json()[
        "id"
    ]
    opted_in = client.post(
        "/v1/contacts",
        json={"email": "dave@example.test", "preferences": {"*": ["email"]}},
        headers=auth,
    ).json()["id"]
    recipients = [
        {"email": "ann@example.test"},
        {"email": "ANN@example.test"},
        {"email": "gone@example.test"},
        {"email": "x@blocked.test"},
        {"email": "broken@"},
        {"contact_id": opted_out},
        {"contact_id": no_email},
        {"contact_id": opted_in},
    ]
    response = client.post(
        "/v1/broadcasts",
        json={
            "from": "app@acme.test",
            "subject": "News",
            "text": "hi",
            "category": "news",
            "recipients": recipients,
        },
        headers=auth,
    )
    assert response.status_code == 202
    assert response.json()["counts"] == {
        "pending": 2,
        "duplicate": 1,
        "dropped": 1,
        "blocked": 1,
        "failed": 1,
        "no_channel": 2,
    }
    broadcast = client.get(f"/v1/broadcasts/{response.json()['id']}", headers=auth).json()
    assert broadcast["counts"] == response.json()["counts"]
    dropped = client.get("/v1/messages?status=dropped", headers=auth).json()["items"]
    assert [m["to"] for m in dropped] == ["gone@example.test"]
    assert "suppressed" in dropped[0]["detail"]
    undelivered = client.get("/v1/messages?undelivered=true", headers=auth).json()["items"]
    assert {m["status"] for m in undelivered} == {"dropped", "blocked", "failed", "no_channel"}


def test_broadcast_with_unknown_contact_stores_nothing(
    client: TestClient, auth: dict[str, str], engine: Engine
) -> None:
    response = client.post(
        "/v1/broadcasts",
        json={
            "from": "app@acme.test",
            "subject": "News",
            "text": "hi",
            "recipients": [{"email": "a@example.test"}, {"contact_id": 999}],
        },
        headers=auth,
    )
    assert response.status_code == 422
    assert "unknown contact ids: 999" in response.json()["detail"]
    assert counts(engine) == (0, 0, 0)


def test_large_broadcast(client: TestClient, auth: dict[str, str]) -> None:
    recipients = [{"email": f"user{i}@example.test"} for i in range(20_000)]
    recipients += recipients[:100]
    response = client.post(
        "/v1/broadcasts",
        json={"from": "app@acme.test", "subject": "News", "text": "hi", "recipients": recipients},
        headers=auth,
    )
    assert response.status_code == 202
    assert response.json()["counts"] == {"pending": 20_000, "duplicate": 100}


def test_cursor_pagination_is_stable(client: TestClient, auth: dict[str, str]) -> None:
    ids = [
        client.post(
            "/v1/messages", json=MESSAGE | {"to": f"u{i}@example.test"}, headers=auth
        ).json()["id"]
        for i in range(7)
    ]
    seen: list[int] = []
    cursor = None
    while True:
        url = "/v1/messages?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=auth).json()
        seen += [m["id"] for m in page["items"]]
        # A message arriving meanwhile goes on the first page, not into this walk.
        client.post("/v1/messages", json=MESSAGE, headers=auth)
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(ids, reverse=True)
    bad = client.get("/v1/messages?cursor=garbage", headers=auth)
    assert bad.status_code == 422 and "cursor" in bad.json()["detail"]
    bad = client.get("/v1/messages?status=lost", headers=auth)
    assert bad.status_code == 422 and "unknown status" in bad.json()["detail"]


def test_filters(client: TestClient, auth: dict[str, str]) -> None:
    a = client.post("/v1/messages", json=MESSAGE | {"category": "billing"}, headers=auth).json()
    client.post("/v1/messages", json=MESSAGE | {"to": "eve@other.test"}, headers=auth)
    by_address = client.get("/v1/messages?address=BOB@example.test", headers=auth).json()
    assert [m["id"] for m in by_address["items"]] == [a["id"]]
    by_domain = client.get("/v1/messages?address=@other.test", headers=auth).json()
    assert [m["to"] for m in by_domain["items"]] == ["eve@other.test"]
    by_category = client.get("/v1/messages?category=billing", headers=auth).json()
    assert [m["id"] for m in by_category["items"]] == [a["id"]]
    future = client.get("/v1/messages?since=2999-01-01T00:00:00Z", headers=auth).json()
    assert future["items"] == []
    past = client.get("/v1/messages?until=2000-01-01T00:00:00Z", headers=auth).json()
    assert past["items"] == []


def test_cancel_only_while_pending(
    client: TestClient, auth: dict[str, str], engine: Engine
) -> None:
    message_id = client.post("/v1/messages", json=MESSAGE, headers=auth).json()["id"]
    response = client.post(f"/v1/messages/{message_id}/cancel", headers=auth)
    assert response.json() == {"id": message_id, "status": "cancelled"}
    again = client.post(f"/v1/messages/{message_id}/cancel", headers=auth)
    assert again.status_code == 409
    assert "this one is cancelled" in again.json()["detail"]
    detail = client.get(f"/v1/messages/{message_id}", headers=auth).json()
    assert [e["kind"] for e in detail["events"]] == ["cancelled"]


def test_resend_to_corrected_address(
    client: TestClient, auth: dict[str, str], engine: Engine
) -> None:
    message_id = client.post(
        "/v1/messages", json=MESSAGE | {"to": "bbo@example.test"}, headers=auth
    ).json()["id"]
    pending = client.post(f"/v1/messages/{message_id}/resend", headers=auth)
    assert pending.status_code == 409 and "still pending" in pending.json()["detail"]
    with engine.begin() as conn:
        recorder.record(
            conn,
            [
                recorder.Fact(message_id, status.Kind.ATTEMPT, "test"),
                recorder.Fact(
                    message_id,
                    status.Kind.BOUNCED,
                    "test",
                    reason="userunknown",
                    hard=True,
                    detail="550 5.1.1 no such user",
                ),
            ],
            policy=suppression.Policy(),
        )
    response = client.post(
        f"/v1/messages/{message_id}/resend", json={"to": "bob@example.test"}, headers=auth
    )
    assert response.status_code == 202
    new = client.get(f"/v1/messages/{response.json()['id']}", headers=auth).json()
    assert new["to"] == "bob@example.test" and new["resend_of"] == message_id
    old = client.get(f"/v1/messages/{message_id}", headers=auth).json()
    assert old["resent_as"] == [new["id"]]
    assert old["status"] == "bounced" and old["reason"] == "userunknown"
    assert old["suppression"]["reason"] == "userunknown"


def test_resend_refused_for_attachments(
    client: TestClient, auth: dict[str, str], engine: Engine
) -> None:
    attachment = {
        "filename": "invoice.pdf",
        "content_type": "application/pdf",
        "content_base64": base64.b64encode(b"%PDF-1.4").decode(),
    }
    message_id = client.post(
        "/v1/messages", json=MESSAGE | {"attachments": [attachment]}, headers=auth
    ).json()["id"]
    with engine.begin() as conn:
        recorder.record(
            conn,
            [
                recorder.Fact(message_id, status.Kind.ATTEMPT, "test"),
                recorder.Fact(message_id, status.Kind.DELIVERED, "test"),
            ],
            policy=suppression.Policy(),
        )
    response = client.post(f"/v1/messages/{message_id}/resend", headers=auth)
    assert response.status_code == 409
    assert "attachments" in response.json()["detail"]
    detail = client.get(f"/v1/messages/{message_id}", headers=auth).json()
    assert detail["attachments"] == [
        {"filename": "invoice.pdf", "content_type": "application/pdf", "size": 8, "stored": False}
    ]


def test_suppressions_and_blocks(client: TestClient, auth: dict[str, str], engine: Engine) -> None:
    added = client.post("/v1/suppressions", json={"address": "Zed@Example.test"}, headers=auth)
    assert added.status_code == 201 and added.json()["added"] is True
    listed = client.get("/v1/suppressions", headers=auth).json()["items"]
    assert [(e["address"], e["reason"]) for e in listed] == [("zed@example.test", "manual")]
    dropped = client.post(
        "/v1/messages", json=MESSAGE | {"to": "zed@example.test"}, headers=auth
    ).json()
    assert dropped["status"] == "dropped"
    removed = client.delete("/v1/suppressions/zed@example.test", headers=auth).json()
    assert removed["removed"] == 1 and removed["dropped_messages"] == [dropped["id"]]
    assert client.delete("/v1/suppressions/zed@example.test", headers=auth).status_code == 404
    assert (
        client.post("/v1/messages", json=MESSAGE | {"to": "zed@example.test"}, headers=auth).json()[
            "status"
        ]
        == "pending"
    )
    assert (
        client.post("/v1/blocks", json={"address": "@spam.test"}, headers=auth).status_code == 201
    )
    assert (
        client.post("/v1/messages", json=MESSAGE | {"to": "a@spam.test"}, headers=auth).json()[
            "status"
        ]
        == "blocked"
    )
    assert client.delete("/v1/blocks/@spam.test", headers=auth).status_code == 200
    with engine.connect() as conn:
        actions = list(conn.scalars(select(t.audit_log.c.action).order_by(t.audit_log.c.id)))
    assert actions == ["suppression.add", "suppression.remove", "block.add", "block.remove"]


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {
        "/v1/messages",
        "/v1/broadcasts",
        "/v1/messages/{message_id}/resend",
        "/v1/suppressions",
    } <= set(spec["paths"])


# region what once answered 500 (issue 13.5): each a 4xx now, with nothing stored

TOO_BIG = 2**63  # one past the largest id either database holds


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("get", f"/v1/messages/{TOO_BIG}", 422),
        ("post", f"/v1/messages/{TOO_BIG}/cancel", 422),
        ("post", f"/v1/messages/{TOO_BIG}/resend", 422),
        ("get", f"/v1/broadcasts/{TOO_BIG}", 422),
        ("get", f"/v1/contacts/{TOO_BIG}", 422),
        ("get", f"/v1/messages?broadcast={TOO_BIG}", 422),
        ("get", f"/v1/suppressions?offset={TOO_BIG}", 422),
        ("get", "/v1/reports/engagement?until=9999-12-31", 422),
        ("get", "/v1/reports/engagement?group=day&until=0001-01-01", 200),  # empty, not 500
    ],
)
def test_out_of_range_numbers_and_dates_are_4xx(
    client: TestClient, auth: dict[str, str], method: str, path: str, code: int
) -> None:
    response = client.request(method, path, headers=auth)
    assert response.status_code == code, response.text
    assert response.json()["detail" if code == 422 else "rows"] is not None


def _nested(depth: int) -> bytes:
    inner = b'{"a": ' * depth + b"1" + b"}" * depth
    return b'{"from": "app@acme.test", "to": "bob@example.test", "text": "x", "metadata": ' + (
        inner + b"}"
    )


def test_json_nested_too_deep_is_400(
    client: TestClient, post_auth: dict[str, str], engine: Engine
) -> None:
    response = client.post(
        "/v1/messages",
        content=_nested(1000),
        headers=post_auth | {"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert counts(engine) == (0, 0, 0)


BROADCAST = {k: v for k, v in MESSAGE.items() if k != "to"} | {
    "recipients": [{"email": "a@example.test"}]
}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/messages", MESSAGE, "text"),
        ("/v1/messages", MESSAGE, "subject"),
        ("/v1/broadcasts", BROADCAST, "subject"),
    ],
)
def test_lone_surrogates_are_422(
    client: TestClient,
    post_auth: dict[str, str],
    engine: Engine,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    raw = json.dumps(body | {field: "bad \ud800 text"})  # ASCII: the surrogate as \ud800
    headers = post_auth | {"Content-Type": "application/json"}
    response = client.post(path, content=raw, headers=headers)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]  # intake names the field and the code point
    assert field in detail and "U+D800" in detail and "lone surrogate" in detail, detail
    assert counts(engine) == (0, 0, 0)
    # a pair of surrogates is one character, an emoji: stored
    pair = json.dumps(body | {field: "fine \U0001f600"})
    assert "\\ud83d\\ude00" in pair
    assert client.post(path, content=pair, headers=headers).status_code == 202


def test_api_answers_carry_the_security_headers(client: TestClient, auth: dict[str, str]) -> None:
    response = client.get("/v1/messages", headers=auth)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "same-origin"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert client.get("/v1/nowhere", headers={"Accept": "text/html"}).json() == {
        "detail": "Not Found"
    }  # the JSON API keeps JSON errors, even for a browser


# endregion
