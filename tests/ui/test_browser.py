"""The web UI in a real browser: Debian's Chromium driven by Playwright, against the app served
by uvicorn on a free port, with mail really delivered to the recipient simulator.

Screenshots of every page, at desktop width and at 360 px, go to docs/screenshots/.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, update

from postwarden import runtime
from postwarden.domain import clock
from postwarden.domain.status import Kind
from postwarden.intake import accept, schemas
from postwarden.settings import Settings
from postwarden.store import accounts, recorder, suppression, users
from postwarden.store import tables as t
from postwarden.testing.simulator import Simulator, build_dsn, free_port
from postwarden.web.app import create_app

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PASSWORD = "correct horse battery"
LIMITS = accept.Limits(10_000_000, 10_000)


def _browser_problem() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    return None


_problem = _browser_problem()
if _problem:
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests must run in CI: {_problem}", pytrace=False)
    pytest.skip(_problem, allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def db_url() -> str:  # the browser tests run on SQLite only
    return "unused"


# region seeding: real deliveries to the simulator


async def _deliver(settings: Settings, parts: runtime.Parts, account: accounts.Account) -> None:
    from postwarden.outbound import registry
    from postwarden.outbound.dispatcher import Dispatcher

    with parts.engine.begin() as conn:
        accept.submit_message(
            conn,
            account,
            schemas.MessageIn.model_validate(
                {
                    "from": "Acme <app@acme.test>",
                    "to": "unknown.jane@example.test",
                    "subject": "Your invoice #1042",
                    "text": "Please find your invoice.",
                    "category": "billing",
                }
            ),
            LIMITS,
        )
        recipients = [{"email": f"customer{i}@example.test"} for i in range(14)] + [
            {"email": "unknown.bob@corp.test"},
            {"email": "full.ann@mail.test"},
            {"email": "spam.check@corp.test"},
            {"email": "customer1@example.test"},
            {"email": "nobody@nullmx.test"},
        ]
        accept.submit_broadcast(
            conn,
            account,
            schemas.BroadcastIn.model_validate(
                {
                    "from": "Acme News <news@acme.test>",
                    "subject": "Spring sale starts today",
                    "text": "Everything is 20% off.",
                    "category": "news",
                    "recipients": recipients,
                }
            ),
            LIMITS,
        )
    dispatcher = Dispatcher(parts.engine, settings, registry.channels(settings, parts.secret))
    try:
        for _ in range(3):
            await dispatcher.run_once()
            await asyncio.sleep(0.3)
    finally:
        await dispatcher.aclose()


def _after_delivery(engine: Engine, account: accounts.Account) -> dict[str, int]:
    """Opens and clicks, a late bounce mail with its raw DSN, older days for the chart."""
    policy = suppression.Policy()
    with engine.begin() as conn:
        rows = {
            r.to_addr: r.id
            for r in conn.execute(t.messages.select().where(t.messages.c.account_id == account.id))
        }
        for i in range(6):
            recorder.record(
                conn,
                [recorder.Fact(rows[f"customer{i}@example.test"], Kind.OPENED, "pixel")],
                policy=policy,
            )
        recorder.record(
            conn,
            [recorder.Fact(rows["customer2@example.test"], Kind.CLICKED, "link")],
            policy=policy,
        )
        late = rows["customer9@example.test"]
        raw = build_dsn(
            reporting_mta="mx.example.test",
            original=b"Subject: Spring sale\r\n\r\nx",
            recipient="customer9@example.test",
            status="5.2.1",
            diagnostic="smtp; 550 5.2.1 The email account that you tried to reach is disabled",
        )
        inbound = conn.scalar(
            insert(t.inbound_mails)
            .values(
                received_at=clock.now(),
                peer="127.0.0.1",
                mail_from="",
                rcpt_to=["b@acme.test"],
                raw=raw,
                state="done",
                kind="dsn",
                account_id=account.id,
            )
            .returning(t.inbound_mails.c.id)
        )
        recorder.record(
            conn,
            [
                recorder.Fact(
                    late,
                    Kind.BOUNCED,
                    "dsn",
                    reason="suspend",
                    hard=False,
                    code="5.2.1",
                    detail="550 5.2.1 The email account that you tried to reach is disabled",
                    inbound_id=inbound,
                )
            ],
            policy=policy,
        )
        # spread the broadcast's first recipients over the last days, for the chart
        for back, i in enumerate(range(10, 14), start=1):
            when = clock.now() - timedelta(days=back)
            conn.execute(
                update(t.messages)
                .where(t.messages.c.id == rows[f"customer{i}@example.test"])
                .values(created_at=when)
            )
        pending = accept.submit_message(
            conn,
            account,
            schemas.MessageIn.model_validate(
                {
                    "from": "app@acme.test",
                    "to": "later@example.test",
                    "subject": "Reminder: your appointment",
                    "text": "See you soon.",
                }
            ),
            LIMITS,
        ).id
    return {"pending": pending, "jane": rows["unknown.jane@example.test"]}


# endregion
# region the server


class _Server:
    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)


class Site:
    def __init__(self, base: str, engine: Engine, ids: dict[str, int], other: int) -> None:
        self.base = base
        self.engine = engine
        self.ids = ids
        self.other_message = other


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    path = tmp_path_factory.mktemp("browser") / "ui.db"

    async def seed() -> tuple[Settings, runtime.Parts, accounts.Account]:
        async with Simulator() as sim:
            settings = Settings(
                database_url=f"sqlite:///{path}",
                secret_key="browser-test",
                smtp={
                    "routes": f"example.test=127.0.0.1:{sim.port},corp.test=127.0.0.1:{sim.port},"
                    f"mail.test=127.0.0.1:{sim.port}",
                    "dns_server": f"127.0.0.1:{sim.dns_port}",
                    "connect_timeout": 2,
                    "command_timeout": 2,
                    "data_timeout": 2,
                },
                min_backoff=30,
                helo_name="pw.test",
                default_bounce_domain="bounces.acme.test",
            )
            parts = runtime.open_parts(settings)
            with parts.engine.begin() as conn:
                account, _ = accounts.create(conn, "acme", "bounces.acme.test")
                users.create(conn, account.id, "ops@acme.test", PASSWORD)
            await _deliver(settings, parts, account)
            return settings, parts, account

    # a thread of its own: pytest-asyncio may have an event loop running in this one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        settings, parts, account = pool.submit(asyncio.run, seed()).result()
    ids = _after_delivery(parts.engine, account)
    with parts.engine.begin() as conn:
        other, _ = accounts.create(conn, "globex", "bounces.globex.test")
        other_id = accept.submit_message(
            conn,
            other,
            schemas.MessageIn.model_validate(
                {
                    "from": "a@globex.test",
                    "to": "z@globex.test",
                    "subject": "Globex only",
                    "text": "x",
                }
            ),
            LIMITS,
        ).id
    port = free_port()
    with _Server(create_app(settings, parts.engine, parts.secret), port):
        yield Site(f"http://127.0.0.1:{port}", parts.engine, ids, other_id)
    parts.engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


CSP_REFUSALS: list[str] = []
"""What Chromium refused under the pages' Content-Security-Policy (an inline style, a script):
every test's pages must need nothing it refuses."""


@pytest.fixture(autouse=True)
def _no_csp_refusals() -> Iterator[None]:
    CSP_REFUSALS.clear()
    yield
    assert not CSP_REFUSALS, CSP_REFUSALS


def _new_page(browser: Browser, site: Site, width: int = 1280) -> Page:
    context = browser.new_context(
        viewport={"width": width, "height": 800 if width > 600 else 740},
        base_url=site.base,
        timezone_id="UTC",
    )
    page = context.new_page()
    page.on(
        "console",
        lambda m: CSP_REFUSALS.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return page


def _sign_in(browser: Browser, site: Site, width: int = 1280) -> Page:
    page = _new_page(browser, site, width)
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    page.get_by_label("Email address").fill("ops@acme.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Dashboard", level=1)).to_be_visible()
    return page


def _shot(page: Page, name: str) -> None:
    width = page.viewport_size["width"] if page.viewport_size else 1280
    suffix = "mobile" if width < 600 else "desktop"
    page.screenshot(path=str(SHOTS / f"{name}-{suffix}.png"), full_page=True)


# endregion


def test_sign_in_and_dashboard(browser: Browser, site: Site) -> None:
    page = _new_page(browser, site)
    context = page.context
    page.goto("/")
    expect(page).to_have_title("Sign in · Postwarden")
    _shot(page, "login")
    page.get_by_label("Email address").fill("ops@acme.test")
    page.get_by_label("Password").fill("wrong password!")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("wrong")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_title("Dashboard · Postwarden")
    expect(page.get_by_role("note")).to_contain_text("suppressed")
    expect(
        page.get_by_role("link", name=re.compile("undelivered in the last 30 days"))
    ).to_be_visible()
    expect(page.get_by_role("link", name="Spring sale starts today")).to_be_visible()
    _shot(page, "dashboard")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_title("Sign in · Postwarden")
    page.goto("/messages")
    expect(page).to_have_url(re.compile("/login"))
    context.close()


def test_find_an_undelivered_message_and_read_its_transcript(browser: Browser, site: Site) -> None:
    page = _sign_in(browser, site)
    page.get_by_role("link", name="Mail log").click()
    expect(page).to_have_title("Mail log · Postwarden")
    _shot(page, "messages")
    today = clock.now().date().isoformat()
    page.get_by_label("Recipient address").fill("unknown.jane@example.test")
    page.get_by_label("From date").fill(today)
    page.get_by_label("To date").fill(today)
    page.get_by_label("Show only undelivered").check()
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.log tbody tr")
    expect(rows).to_have_count(1)
    badge = rows.first.locator(".badge")
    expect(badge).to_contain_text("bounced")
    assert "User unknown" in (badge.get_attribute("title") or "")
    rows.first.get_by_role("link").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("unknown.jane@example.test")
    expect(page.get_by_text("Next step:")).to_be_visible()
    transcript = page.get_by_label("SMTP transcript of attempt 1")
    expect(transcript).to_be_hidden()
    page.get_by_text("Show details").click()
    expect(transcript).to_be_visible()
    expect(transcript).to_contain_text("RCPT TO:<unknown.jane@example.test>")
    expect(transcript).to_contain_text("550 5.1.1")
    _shot(page, "message")
    page.context.close()


def test_late_bounce_shows_the_raw_bounce_mail(browser: Browser, site: Site) -> None:
    page = _sign_in(browser, site)
    page.goto("/messages?address=customer9@example.test")
    page.locator("table.log tbody tr").first.get_by_role("link").click()
    expect(page.locator(".timeline .flag")).to_contain_text("bounced after delivery")
    page.get_by_text("Show details").click()
    expect(page.get_by_label(re.compile("Raw bounce mail"))).to_contain_text(
        "Content-Type: multipart/report"
    )
    page.context.close()


def test_resend_to_a_corrected_address_leaves_the_report(browser: Browser, site: Site) -> None:
    page = _sign_in(browser, site)
    page.get_by_role("link", name="Undelivered", exact=True).click()
    expect(page).to_have_title("Undelivered report · Postwarden")
    _shot(page, "undelivered")
    row = page.locator("table.log tbody tr", has_text="unknown.jane@example.test")
    expect(row).to_have_count(1)
    row.get_by_label(re.compile("Corrected address")).fill("jane@example.test")
    row.get_by_role("button", name="Resend").click()
    status = page.get_by_role("status")
    expect(status).to_contain_text("was resent as message")
    new_id = int(re.search(r"resent as message (\d+)", status.inner_text()).group(1))  # type: ignore[union-attr]
    expect(page.locator("table.log tbody tr", has_text="unknown.jane@example.test")).to_have_count(
        1
    )
    with site.engine.begin() as conn:
        recorder.record(
            conn, [recorder.Fact(new_id, Kind.DELIVERED, "test")], policy=suppression.Policy()
        )
    page.reload()
    expect(page.locator("table.log tbody tr", has_text="unknown.jane@example.test")).to_have_count(
        0
    )
    page.context.close()


def test_remove_a_bounced_address(browser: Browser, site: Site) -> None:
    page = _sign_in(browser, site)
    page.get_by_role("link", name="Bounced addresses", exact=True).click()
    expect(page).to_have_title("Bounced addresses · Postwarden")
    _shot(page, "suppressions")
    page.get_by_label("Address contains").fill("unknown.bob")
    page.get_by_role("button", name="Search").click()
    row = page.locator("tbody tr", has_text="unknown.bob@corp.test")
    expect(row).to_have_count(1)
    row.get_by_role("link", name="Mark email address as valid").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("unknown.bob@corp.test")
    _shot(page, "suppression-remove")
    page.get_by_role("button", name="Yes, mark as valid").click()
    expect(page.get_by_role("status")).to_contain_text("is marked as valid")
    expect(page.locator("tbody tr", has_text="unknown.bob@corp.test")).to_have_count(0)
    page.context.close()


def test_cancel_a_pending_message(browser: Browser, site: Site) -> None:
    page = _sign_in(browser, site)
    page.goto(f"/messages/{site.ids['pending']}")
    expect(page.locator(".headline .badge")).to_contain_text("pending")
    page.get_by_role("button", name="Cancel sending").click()
    expect(page.get_by_role("status")).to_contain_text("is cancelled")
    expect(page.locator(".headline .badge")).to_contain_text("cancelled")
    expect(page.get_by_role("button", name="Cancel sending")).to_have_count(0)
    page.context.close()


def test_broadcast_results(browser: Browser, site: Site) -> None:
    page = _sign_in(browser, site)
    page.get_by_role("link", name="Spring sale starts today").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Spring sale starts today")
    expect(page.locator(".tile .big").first).to_have_text(re.compile(r"\d+\.\d%"))
    expect(page.locator(".tiles")).to_contain_text("opened by people")
    expect(page.locator(".tiles")).to_contain_text("counting link scanners")
    expect(page.locator("table.chart")).to_contain_text("duplicate")
    _shot(page, "broadcast")
    page.context.close()


def test_refusals_csrf_and_other_accounts(browser: Browser, site: Site) -> None:
    page = _sign_in(browser, site)
    response = page.request.post(f"/messages/{site.ids['pending']}/cancel", form={"x": "1"})
    assert response.status == 403
    response = page.goto(f"/messages/{site.other_message}")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    page.context.close()


def test_every_page_at_360_px(browser: Browser, site: Site) -> None:
    page = _sign_in(browser, site, width=360)
    paths = {
        "dashboard": "/",
        "messages": "/messages",
        "message": f"/messages/{site.ids['jane']}",
        "undelivered": "/undelivered",
        "suppressions": "/suppressions",
        "broadcast": "/broadcasts/1",
    }
    for name, path in paths.items():
        page.goto(path)
        if name == "message":
            page.get_by_text("Show details").click()
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        if overflow > 0:
            wide = page.evaluate(
                "[...document.querySelectorAll('body *')].filter(e => "
                "e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)"
                ".slice(0, 5).map(e => e.tagName + '.' + e.className)"
            )
            raise AssertionError(f"{path} scrolls sideways at 360 px by {overflow}px: {wide}")
        _shot(page, name)
    page.context.clear_cookies()
    page.goto("/login")
    _shot(page, "login")
    page.context.close()


def test_inbound_mail_to_review(
    browser: Browser, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreadable mail and a forged bounce (no token, naming a delivered message's
    address), through the real applying: the dashboard says so, the review page lists them
    beside the message, and the raw mail opens as text."""
    from postwarden.inbound.mail import apply, dsn
    from postwarden.inbound.mail.server import InboundServer

    real = dsn._parse_message

    def faulty(message: Any, depth: int = 0) -> dsn.Report:
        if message.get("X-Test-Fault"):
            raise ValueError("planted parser fault")
        return real(message, depth)

    monkeypatch.setattr(dsn, "_parse_message", faulty)
    parts = runtime.Parts(Settings(secret_key="browser-test"), site.engine, b"browser-test")
    store = InboundServer(parts, host="127.0.0.1", port=0).store
    forged = build_dsn(
        reporting_mta="mx.elsewhere.test",
        original=b"To: <customer3@example.test>\r\nSubject: Spring sale\r\n\r\nhi\r\n",
        recipient="customer3@example.test",
        status="5.1.1",
        diagnostic="550 5.1.1 User unknown",
        sender="postmaster@bounces.acme.test",
    )
    unreadable = b"X-Test-Fault: 1\r\nSubject: cannot read me\r\n\r\nbody\r\n"
    store("192.0.2.7:25", "", ["postmaster@bounces.acme.test"], forged)
    raw_id = store("192.0.2.8:25", "", ["postmaster@bounces.acme.test"], unreadable)
    apply.process_pending(parts)

    page = _sign_in(browser, site)
    note = page.get_by_role("note").filter(has_text="inbound mail")
    expect(note).to_contain_text("1 inbound mail could not be read in the last 30 days.")
    expect(note).to_contain_text("1 bounce could not be verified and changed nothing.")
    note.get_by_role("link", name="Review inbound mail").click()
    expect(page.get_by_role("heading", name="Inbound mail to review", level=1)).to_be_visible()
    expect(page.get_by_role("heading", name="Could not be read (1)")).to_be_visible()
    expect(page.locator("section").first).to_contain_text("ValueError: planted parser fault")
    unverified = page.locator("#unverified")
    expect(unverified).to_contain_text("customer3@example.test, still")
    expect(unverified.locator(".badge").first).to_have_text("unverified")
    _shot(page, "inbound")
    unverified.get_by_role("link", name=re.compile(r"^message \d+$")).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("to customer3@example.test")
    page.goto("/inbound")
    page.get_by_role("link", name=f"mail {raw_id}").click()
    expect(page.locator("body")).to_contain_text("Subject: cannot read me")
    page.goto("/inbound")
    page.set_viewport_size({"width": 360, "height": 740})
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"/inbound scrolls sideways at 360 px by {overflow}px"
    _shot(page, "inbound")


@pytest.mark.parametrize("width", [1280, 360])
def test_error_pages(browser: Browser, site: Site, width: int) -> None:
    page = _sign_in(browser, site, width)
    response = page.goto("/no/such/page", referer=f"{site.base}/messages")  # a broken link
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", level=1)).to_have_text("Page not found")
    _shot(page, "error-not-found")
    page.get_by_role("link", name="Back to the page you were on").click()
    expect(page).to_have_title("Mail log · Postwarden")
    response = page.goto("/messages/abc")
    assert response is not None and response.status == 404
    expect(page.get_by_text("message and broadcast numbers are whole numbers")).to_be_visible()
    response = page.goto("/undelivered?until=9999-12-31")
    assert response is not None and response.status == 422
    expect(page.get_by_role("alert")).to_contain_text("the last day a report can end")
    page.goto(f"/messages/{site.ids['jane']}/resend")
    expect(page.get_by_role("heading", level=1)).to_have_text("Not a page to open")
    _shot(page, "error-not-a-page")
    page.get_by_role("link", name="Go to the dashboard").click()
    expect(page).to_have_title("Dashboard · Postwarden")
    page.context.close()


@pytest.mark.parametrize("width", [1280, 360])
def test_a_resend_typed_after_the_session_ended_survives_signing_in(
    browser: Browser, site: Site, width: int
) -> None:
    page = _sign_in(browser, site, width)
    page.goto(f"/messages/{site.ids['jane']}")
    page.context.clear_cookies()  # the session ended while the page was open
    page.get_by_label("Corrected address (optional)").fill("jane.doe@example.test")
    page.get_by_role("button", name="Resend").click()
    expect(page.get_by_role("alert").first).to_contain_text("Your session has ended")
    _shot(page, "session-ended")
    page.get_by_label("Email address").fill("ops@acme.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(f"/messages/{site.ids['jane']}$"))
    expect(page.get_by_label("Corrected address (optional)")).to_have_value("jane.doe@example.test")
    expect(page.get_by_role("status")).to_contain_text("filled in again below")
    _shot(page, "session-ended-kept")
    page.context.close()


@pytest.mark.parametrize("width", [1280, 360])
def test_sign_in_is_paused_after_too_many_wrong_passwords(
    browser: Browser, site: Site, width: int
) -> None:
    page = _new_page(browser, site, width)
    email = f"guessed-{width}@acme.test"
    page.goto("/login")
    for _ in range(10):  # users.PER_EMAIL
        page.get_by_label("Email address").fill(email)
        page.get_by_label("Password").fill("not the password")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("wrong")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Too many wrong passwords for this email address")
    expect(alert).to_contain_text(re.compile(r"paused until \d\d:\d\d UTC \(in 15 minutes\)"))
    _shot(page, "sign-in-paused")
    page.context.close()


def test_other_sites_cannot_frame_the_ui(browser: Browser, site: Site) -> None:
    page = _new_page(browser, site)
    CSP_REFUSALS.clear()
    page.set_content(f'<iframe src="{site.base}/login" width="600" height="400"></iframe>')
    page.wait_for_timeout(500)
    frame = page.frames[-1]
    assert frame is not page.main_frame
    assert frame.locator("#email").count() == 0, "the sign-in page loaded inside a frame"
    CSP_REFUSALS.clear()  # Chromium's refusal to frame it is the point here
    page.context.close()


def test_screenshots_exist() -> None:
    names = sorted(p.name for p in SHOTS.glob("*.png"))
    assert len(names) >= 14, names
    assert shutil.disk_usage(SHOTS).free > 0
