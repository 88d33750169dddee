"""The web UI through TestClient: sign-in, CSRF, account isolation, empty states, CSV export."""

from __future__ import annotations

import csv
import io
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from postwarden.domain import status
from postwarden.domain.status import Kind
from postwarden.intake import accept, schemas
from postwarden.settings import Settings
from postwarden.store import accounts, recorder, suppression, users
from postwarden.web.app import create_app

PASSWORD = "correct horse battery"
LIMITS = accept.Limits(10_000_000, 1000)


def _client(settings: Settings, engine: Engine) -> TestClient:
    return TestClient(create_app(settings, engine, b"s" * 32))


def _token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def _sign_in(client: TestClient, email: str = "admin@acme.test") -> str:
    token = _token(client.get("/login").text)
    response = client.post(
        "/login",
        data={"email": email, "password": PASSWORD, "csrf": token, "next": "/"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return _token(client.get("/").text)


def _send(conn: object, account: accounts.Account, to: str, subject: str = "Hi") -> int:
    body = schemas.MessageIn.model_validate(
        {"from": "App <app@acme.test>", "to": to, "subject": subject, "text": "hello"}
    )
    return accept.submit_message(conn, account, body, LIMITS).id  # type: ignore[arg-type]


def _bounce(conn: object, message_id: int) -> None:
    recorder.record(
        conn,  # type: ignore[arg-type]
        [
            recorder.Fact(
                message_id,
                Kind.BOUNCED,
                "smtp",
                reason="userunknown",
                hard=True,
                code="5.1.1",
                detail="550 5.1.1 <x>: Recipient address rejected: User unknown",
            )
        ],
        policy=suppression.Policy(),
    )


@pytest.fixture
def admin(engine: Engine, account_key: tuple[accounts.Account, str]) -> accounts.Account:
    account, _ = account_key
    with engine.begin() as conn:
        users.create(conn, account.id, "admin@acme.test", PASSWORD)
    return account


@pytest.fixture
def signed_in(settings: Settings, engine: Engine, admin: accounts.Account) -> TestClient:
    """A client signed in as the admin (its CSRF token in ``client.csrf``)."""
    client = _client(settings, engine)
    client.csrf = _sign_in(client)  # type: ignore[attr-defined]
    return client


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/messages",
        "/messages/1",
        "/undelivered",
        "/suppressions",
        "/broadcasts/1",
        "/messages.csv",
    ],
)
def test_pages_require_sign_in(settings: Settings, engine: Engine, path: str) -> None:
    response = _client(settings, engine).get(path, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


def test_sign_in_sets_a_safe_cookie_and_sign_out_ends_it(
    settings: Settings, engine: Engine, admin: accounts.Account
) -> None:
    client = _client(settings, engine)
    token = _token(client.get("/login").text)
    wrong = client.post(
        "/login", data={"email": "admin@acme.test", "password": "nope", "csrf": token}
    )
    assert wrong.status_code == 401
    assert "wrong" in wrong.text
    ok = client.post(
        "/login",
        data={
            "email": "ADMIN@acme.test",
            "password": PASSWORD,
            "csrf": token,
            "next": "https://evil.test/",
        },
        follow_redirects=False,
    )
    assert ok.status_code == 303
    assert ok.headers["location"] == "/"  # no open redirect
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    page = client.get("/")
    assert page.status_code == 200 and "admin@acme.test" in page.text
    out = client.post("/logout", data={"csrf": _token(page.text)}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303


def test_a_forged_cookie_is_not_a_session(
    settings: Settings, engine: Engine, admin: accounts.Account
) -> None:
    client = _client(settings, engine)
    _sign_in(client)
    value = client.cookies["pw_session"]
    body, _, mac = value.partition(".")
    client.cookies.set("pw_session", body + "." + mac[::-1])
    assert client.get("/", follow_redirects=False).status_code == 303


def test_posts_without_the_csrf_token_are_refused(
    settings: Settings, engine: Engine, admin: accounts.Account
) -> None:
    with engine.begin() as conn:
        message_id = _send(conn, admin, "bob@example.test")
    client = _client(settings, engine)
    token = _sign_in(client)
    for path, data in [
        (f"/messages/{message_id}/cancel", {}),
        (f"/messages/{message_id}/resend", {"to": "x@example.test"}),
        ("/suppressions", {"address": "x@example.test"}),
        ("/suppressions/remove", {"address": "x@example.test"}),
        ("/blocks", {"pattern": "@example.test"}),
        ("/logout", {}),
    ]:
        assert client.post(path, data=data).status_code == 403, path
        assert client.post(path, data={**data, "csrf": "forged"}).status_code == 403, path
    login = _client(settings, engine).post(
        "/login", data={"email": "admin@acme.test", "password": PASSWORD}
    )
    assert login.status_code == 403
    # nothing happened: still pending, nothing suppressed or blocked
    page = client.get(f"/messages/{message_id}")
    assert "Cancel sending" in page.text
    assert "No address is suppressed" in client.get("/suppressions").text
    done = client.post(f"/messages/{message_id}/cancel", data={"csrf": token})
    assert done.status_code == 200 and "is cancelled" in done.text


def test_another_accounts_message_and_broadcast_are_not_found(
    settings: Settings, engine: Engine, admin: accounts.Account
) -> None:
    with engine.begin() as conn:
        other, _ = accounts.create(conn, "globex", "bounces.globex.test")
        theirs = _send(conn, other, "secret@globex.test", subject="Their secret")
        broadcast = accept.submit_broadcast(
            conn,
            other,
            schemas.BroadcastIn.model_validate(
                {
                    "from": "a@globex.test",
                    "subject": "B",
                    "text": "x",
                    "recipients": [{"email": "z@globex.test"}],
                }
            ),
            LIMITS,
        ).id
    client = _client(settings, engine)
    token = _sign_in(client)
    response = client.get(f"/messages/{theirs}")
    assert response.status_code == 404
    assert "Their secret" not in response.text
    assert client.get(f"/broadcasts/{broadcast}").status_code == 404
    assert client.post(f"/messages/{theirs}/cancel", data={"csrf": token}).status_code == 404
    assert client.post(f"/messages/{theirs}/resend", data={"csrf": token}).status_code == 404
    assert "secret@globex.test" not in client.get("/messages").text
    assert "secret@globex.test" not in client.get("/messages.csv").text


def test_empty_states_say_what_to_do(
    settings: Settings, engine: Engine, admin: accounts.Account
) -> None:
    client = _client(settings, engine)
    _sign_in(client)
    expectations = {
        "/": ["No messages in the last 7 days", "No broadcasts yet", ">0<"],
        "/messages": ["No messages yet. Send one"],
        "/messages?address=nobody@example.test": ["No messages match these filters"],
        "/undelivered": ["Everything in this period was delivered"],
        "/suppressions": ["No address is suppressed", "Nothing is blocked"],
    }
    for path, phrases in expectations.items():
        page = client.get(path)
        assert page.status_code == 200, path
        assert "<title>" in page.text and '<main id="main"' in page.text
        for phrase in phrases:
            assert phrase in page.text, (path, phrase)
    assert "suppressed." not in client.get("/").text


def test_undelivered_report_resend_and_status_reasons(
    settings: Settings, engine: Engine, admin: accounts.Account
) -> None:
    with engine.begin() as conn:
        bounced = _send(conn, admin, "unknown@example.test", subject="Your invoice")
        _bounce(conn, bounced)
        pending = _send(conn, admin, "fine@example.test")
    client = _client(settings, engine)
    token = _sign_in(client)
    dashboard = client.get("/").text
    assert "1 address is suppressed" in dashboard
    log = client.get("/messages?undelivered=1").text
    assert "unknown@example.test" in log and "fine@example.test" not in log
    assert 'title="Reason: userunknown — 550 5.1.1' in log  # hover says why
    report = client.get("/undelivered")
    assert "unknown@example.test" in report.text
    response = client.post(
        f"/messages/{bounced}/resend",
        data={"csrf": token, "to": "known@example.test", "back": "/undelivered"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/undelivered"
    page = client.get("/undelivered").text
    assert "was resent as message" in page
    assert "unknown@example.test" in page  # until the resend is delivered
    resend_id = int(re.search(r"resent as message (\d+)", page).group(1))  # type: ignore[union-attr]
    with engine.begin() as conn:
        recorder.record(
            conn, [recorder.Fact(resend_id, Kind.DELIVERED, "test")], policy=suppression.Policy()
        )
    assert "unknown@example.test" not in client.get("/undelivered").text
    detail = client.get(f"/messages/{bounced}").text
    assert "Correct the address" in detail or "Next step" in detail
    assert f'href="/messages/{resend_id}"' in detail
    assert "Cancel sending" in client.get(f"/messages/{pending}").text


def test_mark_as_valid_asks_first(
    settings: Settings, engine: Engine, admin: accounts.Account
) -> None:
    with engine.begin() as conn:
        message_id = _send(conn, admin, "gone@example.test")
        _bounce(conn, message_id)
    client = _client(settings, engine)
    token = _sign_in(client)
    listing = client.get("/suppressions?search=gone").text
    assert "gone@example.test" in listing and f"/messages/{message_id}" in listing
    confirm = client.get("/suppressions/remove?address=gone@example.test&category=")
    assert confirm.status_code == 200 and "Yes, mark as valid" in confirm.text
    done = client.post(
        "/suppressions/remove",
        data={"csrf": token, "address": "gone@example.test", "category": ""},
    )
    assert "is marked as valid" in done.text
    assert "No address is suppressed" in client.get("/suppressions").text


def test_csv_export_follows_the_filters(
    settings: Settings, engine: Engine, admin: accounts.Account
) -> None:
    with engine.begin() as conn:
        first = _send(conn, admin, "one@example.test", subject="=HYPERLINK(1)")
        _bounce(conn, first)
        _send(conn, admin, "two@example.test")
    client = _client(settings, engine)
    _sign_in(client)
    response = client.get("/messages.csv?undelivered=1")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["to"] for r in rows] == ["one@example.test"]
    assert rows[0]["status"] == "bounced" and rows[0]["reason"] == "userunknown"
    assert rows[0]["subject"] == "'=HYPERLINK(1)"  # no formula injection
    everything = list(csv.DictReader(io.StringIO(client.get("/messages.csv").text)))
    assert [r["to"] for r in everything] == ["two@example.test", "one@example.test"]
    assert client.get("/messages.csv?since=nonsense").status_code == 422


def test_mail_log_pages_with_a_cursor(
    settings: Settings, engine: Engine, admin: accounts.Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    from postwarden.web import ui

    monkeypatch.setattr(ui, "PAGE", 2)
    with engine.begin() as conn:
        for i in range(5):
            _send(conn, admin, f"r{i}@example.test")
    client = _client(settings, engine)
    _sign_in(client)
    seen: list[str] = []
    url = "/messages"
    while url:
        page = client.get(url).text
        seen += re.findall(r"(r\d)@example\.test</a>", page)
        found = re.search(r'href="(\?[^"]*cursor=[^"]+)" rel="next"', page)
        url = "/messages" + found.group(1).replace("&amp;", "&") if found else ""
    assert seen == ["r4", "r3", "r2", "r1", "r0"]


def test_user_create_refuses_short_passwords_and_duplicates(
    engine: Engine, admin: accounts.Account
) -> None:
    from postwarden import errors

    with engine.begin() as conn:
        with pytest.raises(errors.InvalidInput):
            users.create(conn, admin.id, "x@acme.test", "short")
        with pytest.raises(errors.Conflict):
            users.create(conn, admin.id, "Admin@acme.test", PASSWORD)
    assert isinstance(users.sign_in(engine, "admin@acme.test", PASSWORD, "t"), users.User)
    assert users.sign_in(engine, "nobody@acme.test", PASSWORD, "t") is None


def test_the_page_and_the_resend_say_why_not_in_the_same_words(
    settings: Settings, engine: Engine, admin: accounts.Account
) -> None:
    with engine.begin() as conn:
        pending = _send(conn, admin, "fine@example.test")
    client = _client(settings, engine)
    token = _sign_in(client)
    words = status.resend_refusal("pending", False)
    assert words == "It is still pending: wait for it, or cancel it."
    page = client.get(f"/messages/{pending}").text
    assert f"Resend is not available.</strong> {words}" in page
    client.post(f"/messages/{pending}/resend", data={"csrf": token}, follow_redirects=False)
    assert f"Not resent: {words}" in client.get(f"/messages/{pending}").text
