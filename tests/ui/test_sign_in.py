"""Sign-in, sessions and headers of the web UI (issue 13.4, 13.7), through TestClient.

The rate limit per email and per client address, the password checked outside any write
transaction, failures logged and audited, sessions ended on the server, the Secure flag from
the request's own scheme (a trusted proxy's X-Forwarded-Proto), the security headers.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from test_pages import PASSWORD, _client, _sign_in, _token, admin, signed_in  # noqa: F401

from postwarden.domain import clock
from postwarden.settings import Settings
from postwarden.store import accounts, users
from postwarden.store import tables as t
from postwarden.web.app import create_app

MESSAGE = {"from": "app@acme.test", "to": "bob@example.test", "subject": "Hi", "text": "x"}


def _try(client: TestClient, email: str, password: str) -> int:
    token = _token(client.get("/login").text)
    response = client.post(
        "/login",
        data={"email": email, "password": password, "csrf": token, "next": "/"},
        follow_redirects=False,
    )
    return response.status_code


class _CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__()
        self.checked = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.checked += 1
        return super().verify(hash, password)


# region rate limit


def test_wrong_passwords_for_one_email_pause_its_sign_in(
    settings: Settings,
    engine: Engine,
    admin: accounts.Account,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = _client(settings, engine)
    for _ in range(users.PER_EMAIL):
        assert _try(client, "admin@acme.test", "wrong password") == 401
    hasher = _CountingHasher()
    monkeypatch.setattr(users, "_hasher", hasher)
    caplog.set_level(logging.WARNING, "postwarden")
    token = _token(client.get("/login").text)
    response = client.post(
        "/login",
        data={"email": "Admin@acme.test", "password": PASSWORD, "csrf": token},
        follow_redirects=False,
    )
    assert response.status_code == 429  # even the right password: it is not checked
    assert hasher.checked == 0
    assert "Too many wrong passwords for this email address" in response.text
    assert "UTC (in 15 minutes)" in response.text
    assert 800 < int(response.headers["retry-after"]) <= 900
    assert "sign-in refused for 'admin@acme.test' from testclient" in caplog.text
    # another user signs in meanwhile
    with engine.begin() as conn:
        users.create(conn, admin.id, "other@acme.test", PASSWORD)
    assert _try(_client(settings, engine), "other@acme.test", PASSWORD) == 303
    # once the failures are older than the window, the right password works again
    with engine.begin() as conn:
        conn.execute(
            update(t.sign_in_failures).values(at=clock.now() - users.WINDOW - timedelta(1))
        )
    assert _try(client, "admin@acme.test", PASSWORD) == 303


def test_wrong_passwords_from_one_address_pause_its_sign_ins(
    settings: Settings,
    engine: Engine,
    admin: accounts.Account,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(users, "PER_CLIENT", 4, raising=False)
    client = _client(settings, engine)
    for i in range(4):  # a different email each time: only the client address repeats
        assert _try(client, f"guess{i}@acme.test", "wrong password") == 401
    token = _token(client.get("/login").text)
    response = client.post(
        "/login", data={"email": "admin@acme.test", "password": PASSWORD, "csrf": token}
    )
    assert response.status_code == 429
    assert "from your network" in response.text


def test_failed_sign_ins_are_logged_and_audited(
    settings: Settings,
    engine: Engine,
    admin: accounts.Account,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "postwarden")
    client = _client(settings, engine)
    assert _try(client, "admin@acme.test", "wrong password") == 401
    assert _try(client, "nobody@acme.test", "wrong password") == 401
    assert "sign-in failed for 'admin@acme.test' from testclient" in caplog.text
    assert "sign-in failed for 'nobody@acme.test' from testclient" in caplog.text
    with engine.connect() as conn:
        audit = conn.execute(select(t.audit_log)).all()
    assert [(a.account_id, a.action, a.target, a.actor) for a in audit] == [
        (admin.id, "user.sign_in_failed", "admin@acme.test", "web testclient")
    ]  # an unknown address has no account to audit in: the log line has it


def test_the_password_is_checked_outside_any_write_transaction(
    settings: Settings,
    engine: Engine,
    admin: accounts.Account,  # noqa: F811
    account_key: tuple[accounts.Account, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While argon2 runs, POST /v1/messages from another client is stored: the sign-in holds
    no write lock (on SQLite the whole database's) that intake would have to wait for."""
    api = TestClient(create_app(settings, engine, b"s" * 32))
    outcomes: list[int] = []

    class Hasher(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            auth = {"Authorization": f"Bearer {account_key[1]}"}
            intake = threading.Thread(
                target=lambda: outcomes.append(
                    api.post("/v1/messages", json=MESSAGE, headers=auth).status_code
                )
            )
            intake.start()
            intake.join(10)  # it cannot finish while a write transaction waits on this thread
            outcomes.append(-1 if intake.is_alive() else 0)
            return super().verify(hash, password)

    monkeypatch.setattr(users, "_hasher", Hasher())
    assert _try(_client(settings, engine), "admin@acme.test", PASSWORD) == 303
    assert outcomes[:2] == [202, 0], "POST /v1/messages waited for the sign-in"


# endregion
# region sessions


def test_an_old_cookie_is_refused_after_sign_out(
    signed_in: TestClient,  # noqa: F811
) -> None:
    client = signed_in
    token = client.csrf  # type: ignore[attr-defined]
    old = client.cookies["pw_session"]
    client.post("/logout", data={"csrf": token})
    client.cookies.set("pw_session", old)  # as a copied (stolen, cached) cookie would
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


def test_signing_in_again_ends_the_session_the_cookie_had(
    signed_in: TestClient,  # noqa: F811
) -> None:
    client = signed_in
    old = client.cookies["pw_session"]
    _sign_in(client)
    assert client.get("/", follow_redirects=False).status_code == 200
    client.cookies.set("pw_session", old)
    assert client.get("/", follow_redirects=False).status_code == 303


def test_an_expired_session_is_refused(
    engine: Engine,
    signed_in: TestClient,  # noqa: F811
) -> None:
    client = signed_in
    assert client.get("/", follow_redirects=False).status_code == 200
    with engine.begin() as conn:
        conn.execute(update(t.sessions).values(expires_at=clock.now() - timedelta(seconds=1)))
    assert client.get("/", follow_redirects=False).status_code == 303


def _session_cookie(client: TestClient, headers: dict[str, str] | None = None) -> str:
    token = _token(client.get("/login").text)
    response = client.post(
        "/login",
        data={"email": "admin@acme.test", "password": PASSWORD, "csrf": token},
        headers=headers or {},
        follow_redirects=False,
    )
    assert response.status_code == 303
    return response.headers["set-cookie"].lower()


def test_the_secure_flag_follows_how_the_ui_is_reached(
    settings: Settings,
    engine: Engine,
    admin: accounts.Account,  # noqa: F811
) -> None:
    app = create_app(settings, engine, b"s" * 32)
    assert "secure" not in _session_cookie(TestClient(app))  # plain http: a cookie that works
    assert "secure" in _session_cookie(TestClient(app, base_url="https://testserver"))
    # X-Forwarded-Proto from a client that is not a trusted proxy changes nothing ...
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    assert "secure" not in _session_cookie(TestClient(app), forwarded)
    # ... from a trusted proxy it is believed, and so is the client address it names
    trusting = settings.model_copy(update={"trusted_proxies": "testclient"})
    proxied = TestClient(create_app(trusting, engine, b"s" * 32))
    assert "secure" in _session_cookie(proxied, forwarded)
    token = _token(proxied.get("/login").text)
    proxied.post(
        "/login",
        data={"email": "admin@acme.test", "password": "wrong password", "csrf": token},
        headers=forwarded,
    )
    with engine.connect() as conn:
        assert conn.scalars(select(t.sign_in_failures.c.client)).all() == ["203.0.113.9"]


def test_pages_carry_the_security_headers(
    settings: Settings,
    engine: Engine,
) -> None:
    client = _client(settings, engine)
    page = client.get("/login")
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "same-origin"
    csp = page.headers["content-security-policy"]
    for directive in ("default-src 'none'", "style-src 'self'", "frame-ancestors 'none'"):
        assert directive in csp
    assert "script-src" not in csp  # default-src 'none': no script runs
    unsubscribe = client.get("/t/u/forged")
    assert "style-src 'unsafe-inline'" in unsubscribe.headers["content-security-policy"]
    assert "content-security-policy" not in client.get("/docs").headers


# endregion
