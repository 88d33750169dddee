"""Read-only requests never wait for SQLite's write lock: every GET page of the UI and every
read route of the API answers while another connection holds the lock (a long write by the
dispatcher in this process, or by another process), instead of queueing behind it.

SQLite only: PostgreSQL has no database-wide write lock. The waits are cut to half a second
so that a page that does take the lock fails at once ("database is locked") instead of after
the usual 30 s.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine

from postwarden.domain import tokens
from postwarden.intake import accept, schemas
from postwarden.settings import Settings
from postwarden.store import accounts, contacts, db, suppression, users

PASSWORD = "correct horse battery"
SECRET = b"s" * 32
LIMITS = accept.Limits(10_000_000, 1000)


@pytest.fixture
def sqlite_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    from conftest import make_database

    return make_database("sqlite", request, tmp_path)


@pytest.fixture
def engine(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setattr(db, "BUSY_TIMEOUT", 0.5)  # before connecting: the pragma takes it too
    engine = db.connect(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pages(engine: Engine) -> tuple[list[str], str]:
    """Every read page and route, over data of each kind; and an API key."""
    with engine.begin() as conn:
        account, key = accounts.create(conn, "acme", "bounces.acme.test")
        users.create(conn, account.id, "admin@acme.test", PASSWORD)
        suppression.suppress(conn, account.id, "gone@example.test", reason="manual", source="t")
        suppression.block(conn, account.id, "@blocked.test", actor="test")
        contact = contacts.create(
            conn, account.id, name="Ann", email="ann@example.test", phone=None, preferences={}
        )
        body = {"from": "app@acme.test", "subject": "Hi", "text": "hello", "category": "news"}
        message = accept.submit_message(
            conn,
            account,
            schemas.MessageIn.model_validate(body | {"to": "bob@example.test"}),
            LIMITS,
        ).id
        broadcast = accept.submit_broadcast(
            conn,
            account,
            schemas.BroadcastIn.model_validate(body | {"recipients": [{"contact_id": contact}]}),
            LIMITS,
        ).id
    unsubscribe = tokens.sign(SECRET, "u", message, tokens.category_tag("news"))
    return [
        "/login",
        "/",
        "/messages",
        "/messages?status=pending&address=bob@example.test",
        f"/messages/{message}",
        "/messages.csv",
        "/undelivered",
        "/suppressions",
        "/suppressions/remove?address=gone@example.test",
        f"/broadcasts/{broadcast}",
        "/v1/messages",
        f"/v1/messages/{message}",
        f"/v1/broadcasts/{broadcast}",
        f"/v1/contacts/{contact}",
        "/v1/suppressions",
        "/v1/blocks",
        "/v1/reports/engagement",
        f"/t/u/{unsubscribe}",
    ], key


def _signed_in(settings: Settings, engine: Engine) -> TestClient:
    from postwarden.web.app import create_app

    client = TestClient(create_app(settings, engine, SECRET))
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert token is not None
    signed = client.post(
        "/login",
        data={"email": "admin@acme.test", "password": PASSWORD, "csrf": token.group(1)},
        follow_redirects=False,
    )
    assert signed.status_code == 303, signed.text
    return client


def _hold_in_this_process(engine: Engine, _path: str) -> Iterator[None]:
    """A write transaction of this process (the dispatcher's, say): Postwarden's own lock
    and SQLite's."""
    conn: Connection = engine.connect()
    conn.begin()
    conn.exec_driver_sql("UPDATE accounts SET tracking = tracking")
    yield
    conn.rollback()
    conn.close()


def _hold_in_another_process(_engine: Engine, path: str) -> Iterator[None]:
    """A write transaction of another program: SQLite's lock alone."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    yield
    other.execute("ROLLBACK")
    other.close()


@pytest.mark.parametrize("hold", [_hold_in_this_process, _hold_in_another_process])
def test_read_pages_answer_while_the_write_lock_is_held(
    engine: Engine,
    sqlite_url: str,
    pages: tuple[list[str], str],
    hold: object,
) -> None:
    paths, key = pages
    settings = Settings(database_url=sqlite_url, secret_key="test-secret")
    client = _signed_in(settings, engine)
    held = hold(engine, sqlite_url.removeprefix("sqlite:///"))  # type: ignore[operator]
    next(held)
    try:
        for path in paths:
            accounts.forget_keys()  # the API key is looked up again, on a reader too
            response = client.get(path, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, (path, response.text[:300])
    finally:
        next(held, None)
