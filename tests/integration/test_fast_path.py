"""``api.MessageFastPath``: which requests it answers itself, and that every other one reaches
the FastAPI app with its body intact (so refusals keep FastAPI's wording)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine, select

from postwarden.settings import Settings
from postwarden.store import accounts
from postwarden.store import tables as t
from postwarden.web import api
from postwarden.web.app import create_app

MESSAGE = {"from": "App <app@acme.test>", "to": "bob@example.test", "subject": "Hi", "text": "Yo"}


class Inner:
    """Stands for the FastAPI app behind the fast path: records what reached it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def call(
    path: api.MessageFastPath,
    chunks: list[bytes],
    *,
    key: str | None,
    content_type: bytes = b"application/json",
    method: str = "POST",
    url: str = "/v1/messages",
) -> tuple[int, bytes]:
    headers = [(b"content-type", content_type)]
    if key is not None:
        headers.append((b"authorization", b"Bearer " + key.encode()))
    scope = {"type": "http", "method": method, "path": url, "headers": headers}
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await path(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
def parts(
    settings: Settings, engine: Engine, account_key: tuple[accounts.Account, str]
) -> tuple[api.MessageFastPath, Inner, str]:
    with engine.connect() as conn:  # the key was seen moments ago: cached
        accounts.authenticate_cached(conn, account_key[1])
    inner = Inner()
    app = create_app(settings, engine, b"secret")
    return api.MessageFastPath(inner, app.state, limit=2_000), inner, account_key[1]


async def test_a_plain_request_is_stored_without_the_app(
    parts: tuple[api.MessageFastPath, Inner, str], engine: Engine
) -> None:
    path, inner, key = parts
    body = json.dumps(MESSAGE).encode()
    code, answer = await call(path, [body[:10], body[10:]], key=key)  # in two pieces
    assert code == 202 and inner.bodies == []
    accepted = json.loads(answer)
    assert accepted["status"] == "pending"
    with engine.connect() as conn:
        row = conn.execute(select(t.messages).where(t.messages.c.id == accepted["id"])).one()
    assert row.to_addr == "bob@example.test"
    code, answer = await call(
        path, [json.dumps(MESSAGE | {"to": "nobody"}).encode()], key=key
    )  # refused by intake, worded as the route words it
    assert code == 422 and "not a valid email address" in json.loads(answer)["detail"]
    code, _ = await call(path, [body], key=key, content_type=b"application/json; charset=utf-8")
    assert code == 202


@pytest.mark.parametrize(
    ("chunks", "key", "content_type", "method", "url"),
    [
        ([b'{"from": '], "key", b"application/json", "POST", "/v1/messages"),  # not JSON
        ([json.dumps(MESSAGE | {"x": 1}).encode()], "key", b"application/json", "POST", None),
        ([json.dumps(MESSAGE).encode()], None, b"application/json", "POST", None),  # no key
        ([json.dumps(MESSAGE).encode()], "unknown", b"application/json", "POST", None),
        ([json.dumps(MESSAGE).encode()], "key", b"text/plain", "POST", None),
        ([json.dumps(MESSAGE).encode()], "key", b"application/json", "PUT", None),
        ([json.dumps(MESSAGE).encode()], "key", b"application/json", "POST", "/v1/broadcasts"),
        ([b"x" * 1500, b"y" * 1500, b"z" * 10], "key", b"application/json", "POST", None),
    ],
)
async def test_everything_else_reaches_the_app_with_its_body(
    parts: tuple[api.MessageFastPath, Inner, str],
    engine: Engine,
    chunks: list[bytes],
    key: str | None,
    content_type: bytes,
    method: str,
    url: str | None,
) -> None:
    path, inner, real_key = parts
    code, _ = await call(
        path,
        chunks,
        key=real_key if key == "key" else key,
        content_type=content_type,
        method=method,
        url=url or "/v1/messages",
    )
    assert code == 299
    assert inner.bodies == [b"".join(chunks)]
    with engine.connect() as conn:
        assert conn.execute(select(t.messages.c.id)).first() is None
