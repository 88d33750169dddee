"""The inbound mail review page and the dashboard's count of it, through TestClient, on mails
stored and applied by the real inbound path (unreadable ones, unverified bounces)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from postwarden.domain import clock
from postwarden.domain.status import Kind
from postwarden.inbound.mail import apply, dsn
from postwarden.inbound.mail.server import InboundServer
from postwarden.intake import accept, schemas
from postwarden.runtime import Parts
from postwarden.settings import Settings
from postwarden.store import accounts, recorder, suppression, users
from postwarden.store import tables as t
from postwarden.testing.simulator import build_dsn
from postwarden.web.app import create_app

PASSWORD = "correct horse battery"
SECRET = b"s" * 32
BOUNCE_DOMAIN = "bounces.acme.test"
UNREADABLE = b"X-Test-Fault: yes\r\nSubject: <b>unreadable</b>\r\n\r\nwhatever\r\n"


def _sign_in(client: TestClient, email: str) -> None:
    page = client.get("/login").text
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token
    response = client.post(
        "/login",
        data={"email": email, "password": PASSWORD, "csrf": token.group(1), "next": "/"},
        follow_redirects=False,
    )
    assert response.status_code == 303


def _sent(engine: Engine, account: accounts.Account, to: str) -> int:
    body = schemas.MessageIn.model_validate(
        {"from": "shop@acme.test", "to": to, "subject": "Your order", "text": "hello"}
    )
    with engine.begin() as conn:
        mid = accept.submit_message(conn, account, body, accept.Limits(10_000_000, 1000)).id
        recorder.record(
            conn,
            [
                recorder.Fact(mid, Kind.ATTEMPT, "smtp", dedupe_key="a"),
                recorder.Fact(mid, Kind.RELAYED, "smtp", dedupe_key="a:1"),
            ],
            policy=suppression.Policy(),
        )
    return mid


@pytest.fixture
def seeded(
    settings: Settings,
    engine: Engine,
    account_key: tuple[accounts.Account, str],
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, int]:
    """An unreadable mail (the parser fails on it), a forged bounce naming a real message's
    address without a token, an old unreadable one, and another account's."""
    account, _ = account_key
    with engine.begin() as conn:
        users.create(conn, account.id, "ops@acme.test", PASSWORD)
        other, _ = accounts.create(conn, "globex", "bounces.globex.test")
        users.create(conn, other.id, "ops@globex.test", PASSWORD)
    real = dsn._parse_message

    def faulty(message: object, depth: int = 0) -> dsn.Report:
        if message.get("X-Test-Fault"):  # type: ignore[attr-defined]
            raise UnicodeEncodeError("ascii", "x", 0, 1, "planted fault")
        return real(message, depth)  # type: ignore[arg-type]

    monkeypatch.setattr(dsn, "_parse_message", faulty)
    mid = _sent(engine, account, "victim@example.test")
    forged = build_dsn(
        reporting_mta="mx.attacker.test",
        original=b"To: <victim@example.test>\r\nSubject: Your order\r\n\r\nhi\r\n",
        recipient="victim@example.test",
        status="5.1.1",
        diagnostic="550 5.1.1 User unknown",
        sender=f"postmaster@{BOUNCE_DOMAIN}",
    )
    parts = Parts(settings, engine, SECRET)
    store = InboundServer(parts, host="127.0.0.1", port=0).store
    ids = {
        "old": store("192.0.2.1:25", "", [f"postmaster@{BOUNCE_DOMAIN}"], UNREADABLE),
        "unreadable": store(
            "192.0.2.1:25", "<script>x</script>", [f"postmaster@{BOUNCE_DOMAIN}"], UNREADABLE
        ),
        "forged": store("192.0.2.9:25", "", [f"postmaster@{BOUNCE_DOMAIN}"], forged),
        "globex": store("192.0.2.1:25", "", ["postmaster@bounces.globex.test"], UNREADABLE),
        "message": mid,
    }
    apply.process_pending(parts)
    with engine.begin() as conn:
        conn.execute(
            update(t.inbound_mails)
            .where(t.inbound_mails.c.id == ids["old"])
            .values(received_at=clock.now() - timedelta(days=31))
        )
    return ids


def test_dashboard_counts_and_review_page_lists_them(
    settings: Settings, engine: Engine, seeded: dict[str, int]
) -> None:
    client = TestClient(create_app(settings, engine, SECRET))
    _sign_in(client, "ops@acme.test")
    dashboard = client.get("/").text
    assert "1 inbound mail could not be read in the last 30 days." in dashboard
    assert "1 bounce could not be verified</strong> and changed nothing." in dashboard
    assert 'href="/inbound"' in dashboard

    page = client.get("/inbound")
    assert page.status_code == 200
    html = page.text
    assert "Could not be read (1)" in html
    assert "Bounces that could not be verified (1)" in html
    # the error, its mail and the sender, escaped; not the old one nor another account's
    assert "UnicodeEncodeError: &#39;ascii&#39; codec can&#39;t encode character" in html
    assert "planted fault (in faulty, test_inbound_review.py:" in html
    assert f'href="/inbound/{seeded["unreadable"]}/raw"' in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<script>x" not in html
    for absent in ("old", "globex"):
        assert f"/inbound/{seeded[absent]}/raw" not in html
    # the forged bounce, beside the message it names, marked unverified; that message unchanged
    assert f'href="/inbound/{seeded["forged"]}/raw"' in html
    unverified = html[html.index('id="unverified"') :]
    assert re.search(
        r'unverified</span> <a href="/messages/(\d+)">message \1</a> to victim@example.test, '
        r'still <span class="badge t-info">sent</span>',
        unverified,
    )
    assert f'href="/messages/{seeded["message"]}"' in unverified


def test_raw_mail_is_shown_as_plain_text_to_its_account_only(
    settings: Settings, engine: Engine, seeded: dict[str, int]
) -> None:
    client = TestClient(create_app(settings, engine, SECRET))
    _sign_in(client, "ops@acme.test")
    raw = client.get(f"/inbound/{seeded['unreadable']}/raw")
    assert raw.status_code == 200
    assert raw.content == UNREADABLE
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert raw.headers["x-content-type-options"] == "nosniff"
    missing = client.get(f"/inbound/{seeded['globex']}/raw")
    assert missing.status_code == 404
    assert "There is no inbound mail" in missing.text

    other = TestClient(create_app(settings, engine, SECRET))
    _sign_in(other, "ops@globex.test")
    assert other.get(f"/inbound/{seeded['unreadable']}/raw").status_code == 404
    assert other.get(f"/inbound/{seeded['globex']}/raw").content == UNREADABLE
    assert "1 inbound mail could not be read" in other.get("/").text
    assert "could not be verified" not in other.get("/").text


def test_the_review_pages_need_a_session(settings: Settings, engine: Engine) -> None:
    client = TestClient(create_app(settings, engine, SECRET))
    for path in ("/inbound", "/inbound/1/raw"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=")


def test_nothing_to_review_says_so(
    settings: Settings, engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    with engine.begin() as conn:
        users.create(conn, account_key[0].id, "ops@acme.test", PASSWORD)
    client = TestClient(create_app(settings, engine, SECRET))
    _sign_in(client, "ops@acme.test")
    assert "Review inbound mail" not in client.get("/").text
    html = client.get("/inbound").text
    assert "Every inbound mail of this period could be read." in html
    assert "No unverified bounces in this period." in html
