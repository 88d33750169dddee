"""Engagement tracking over HTTP, on both databases: messages delivered by the dispatcher to
the loopback Simulator carry a pixel, redirect links and RFC 8058 headers; fetching them
records opens, clicks and unsubscribes, people and machines apart."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, update

from postwarden.domain import clock, links, tokens
from postwarden.inbound import tracking
from postwarden.intake import accept, schemas
from postwarden.outbound import registry
from postwarden.outbound.channels.email import tracking as email_tracking
from postwarden.outbound.dispatcher import Dispatcher
from postwarden.settings import Settings
from postwarden.store import accounts, queries
from postwarden.store import tables as t
from postwarden.testing.simulator import Simulator
from postwarden.web.app import create_app

LIMITS = accept.Limits(10_000_000, 200_000)
SECRET = b"tracking-test-secret"
BASE = "http://track.postwarden.test"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
HTML = (
    "<html><body><p>Hello!</p>"
    '<a href="https://shop.example/orders/42?x=1&amp;y=2">Your order</a> '
    '<a href="https://shop.example/help">Help</a> '
    '<a href="https://shop.example/private" data-pw-notrack>Private</a> '
    '<a href="mailto:help@shop.example">Mail us</a>'
    "</body></html>"
)
TEXT = "Hello! Your order: https://shop.example/orders/42"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(greylist_delay=0.2, slow_delay=0.3) as simulator:
        yield simulator


@pytest.fixture
def tsettings(settings: Settings, sim: Simulator) -> Settings:
    return settings.model_copy(
        update={
            "tracking_base_url": BASE,
            "smtp": settings.smtp.model_copy(
                update={"routes": {"example.test": ("127.0.0.1", sim.port)}}
            ),
        }
    )


@pytest.fixture
def client(tsettings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(tsettings, engine, SECRET), follow_redirects=False) as c:
        yield c


def http(tsettings: Settings, engine: Engine, ip: str) -> TestClient:
    """A client seen from ``ip``: a fresh one, without cookies."""
    app = create_app(tsettings, engine, SECRET)
    return TestClient(app, follow_redirects=False, client=(ip, 40000))


def submit(engine: Engine, account: accounts.Account, to: str, **more: Any) -> int:
    body = schemas.MessageIn.model_validate(
        {"from": "Shop <shop@acme.test>", "to": to, "subject": "Your order", "html": HTML} | more
    )
    with engine.begin() as conn:
        return accept.submit_message(conn, account, body, LIMITS).id


def broadcast(
    engine: Engine, account: accounts.Account, to: list[str], category: str, **more: Any
) -> int:
    body = schemas.BroadcastIn.model_validate(
        {
            "from": "Shop <shop@acme.test>",
            "subject": "News",
            "html": HTML,
            "category": category,
            "recipients": [{"email": a} for a in to],
        }
        | more
    )
    with engine.begin() as conn:
        return accept.submit_broadcast(conn, account, body, LIMITS).id


async def deliver(tsettings: Settings, engine: Engine) -> None:
    dispatcher = Dispatcher(engine, tsettings, registry.channels(tsettings, SECRET))
    try:
        for _ in range(4):
            await dispatcher.run_once()
    finally:
        await dispatcher.aclose()


def received(sim: Simulator, to: str) -> email.message.EmailMessage:
    (data,) = [r.data for r in sim.received if r.rcpt_tos == (to,)]
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def html_of(msg: email.message.EmailMessage) -> str:
    part = msg.get_body(("html",))
    assert part is not None
    return part.get_content()  # type: ignore[no-any-return]


def pixel_path(html: str) -> str:
    (url,) = re.findall(r'<img src="([^"]+/t/o/[^"]+)"', html)
    assert url.startswith(BASE + "/t/o/")
    return urlsplit(url).path


def link_paths(html: str) -> list[str]:
    urls = re.findall(r'href="(' + re.escape(BASE) + r'/t/c/[^"]+)"', html)
    return [urlsplit(u).path for u in urls]


def events(engine: Engine, message_id: int, kind: str | None = None) -> list[Any]:
    query = select(t.events).where(t.events.c.message_id == message_id)
    if kind:
        query = query.where(t.events.c.kind == kind)
    with engine.connect() as conn:
        return list(conn.execute(query.order_by(t.events.c.id)))


def status_of(engine: Engine, message_id: int) -> str:
    with engine.connect() as conn:
        return conn.scalar(select(t.messages.c.status).where(t.messages.c.id == message_id))


def delivered_ago(engine: Engine, seconds: float) -> None:
    """Move every delivered event back in time (a person reads mail a while after it came)."""
    with engine.begin() as conn:
        conn.execute(
            update(t.events)
            .where(t.events.c.kind == "delivered")
            .values(occurred_at=clock.now() - timedelta(seconds=seconds))
        )


def counts(engine: Engine) -> tuple[int, int, list[str]]:
    with engine.connect() as conn:
        return (
            conn.scalar(select(func.count()).select_from(t.events)) or 0,
            conn.scalar(select(func.count()).select_from(t.suppressions)) or 0,
            list(conn.scalars(select(t.messages.c.status).order_by(t.messages.c.id))),
        )


async def test_a_sent_messages_pixel_and_links_work(
    sim: Simulator,
    tsettings: Settings,
    engine: Engine,
    account_key: tuple[accounts.Account, str],
    client: TestClient,
) -> None:
    account = account_key[0]
    mid = submit(engine, account, "alice@example.test", text=TEXT)
    await deliver(tsettings, engine)
    assert status_of(engine, mid) == "delivered"
    msg = received(sim, "alice@example.test")
    assert msg["List-Unsubscribe"] is None  # not a broadcast
    html = html_of(msg)
    links = link_paths(html)
    assert len(links) == 2
    assert 'href="https://shop.example/private"' in html and "data-pw-notrack" not in html
    assert 'href="mailto:help@shop.example"' in html
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "https://shop.example/orders/42" in text and "/t/c/" not in text  # not configured
    delivered_ago(engine, 120)

    for _ in range(3):  # a reload does not pile up events
        response = client.get(pixel_path(html), headers={"User-Agent": FIREFOX})
        assert response.status_code == 200
        assert response.content == tracking.PIXEL and len(response.content) == 43
        assert response.headers["content-type"] == "image/gif"
        assert "no-store" in response.headers["cache-control"]
    assert status_of(engine, mid) == "opened"
    (opened,) = events(engine, mid, "opened")
    assert opened.source == "tracking"
    assert opened.data == {
        "machine": False,
        "rule": "default",
        "ip_class": "other",
        "user_agent": FIREFOX,
    }

    response = client.get(links[0], headers={"User-Agent": FIREFOX})
    assert response.status_code == 302
    assert response.headers["location"] == "https://shop.example/orders/42?x=1&y=2"
    response = client.get(links[1], headers={"User-Agent": FIREFOX})
    assert response.headers["location"] == "https://shop.example/help"
    assert status_of(engine, mid) == "clicked"
    clicks = events(engine, mid, "clicked")
    assert [c.data["link"] for c in clicks] == [0, 1]
    assert not clicks[0].data["machine"]


async def test_forged_truncated_and_other_accounts_tokens_change_nothing(
    sim: Simulator,
    tsettings: Settings,
    engine: Engine,
    account_key: tuple[accounts.Account, str],
    client: TestClient,
) -> None:
    account = account_key[0]
    with engine.begin() as conn:
        other, _ = accounts.create(conn, "globex", "bounces.globex.test")
    mine = submit(engine, account, "alice@example.test")
    theirs = broadcast(engine, other, ["bob@example.test"], "news")
    await deliver(tsettings, engine)
    html = html_of(received(sim, "alice@example.test"))
    their_msg = received(sim, "bob@example.test")
    their_html = html_of(their_msg)
    pixel = pixel_path(html).rsplit("/", 1)[1]
    link = link_paths(html)[0].rsplit("/", 1)[1]
    their_link = link_paths(their_html)[0].rsplit("/", 1)[1]
    their_unsub = their_msg["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]
    with engine.connect() as conn:
        their_id = conn.scalar(select(t.messages.c.id).where(t.messages.c.broadcast_id == theirs))

    def flip(token: str) -> str:
        return token[:5] + ("A" if token[5] != "A" else "B") + token[6:]

    def splice(token: str, message_id: int) -> str:
        """Their MAC on a payload naming my message."""
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = bytes((1,)) + tokens._uvarint(message_id) + tokens._uvarint(0)
        return base64.urlsafe_b64encode(payload + raw[-12:]).rstrip(b"=").decode()

    def bad_tokens(token: str, purpose: str) -> list[str]:
        return [
            flip(token),
            token[:-2],
            token[:10],
            token + "AA",
            tokens.sign(b"another-instance", purpose, mine, 0),
            splice(their_link, mine),
            tokens.sign(SECRET, purpose, 987654, 0),  # well signed, no such message
            "",
            "x" * 5000,
            "%00",
        ]

    valid_pixel = client.get(f"/t/o/{pixel}")
    before = counts(engine)
    for bad in [*bad_tokens(pixel, "o"), link]:  # a click token is not an open token
        response = client.get(f"/t/o/{bad}")
        assert response.status_code == 200, bad
        assert response.content == valid_pixel.content
        assert response.headers == valid_pixel.headers
    unknown = client.get(f"/t/c/{tokens.sign(SECRET, 'c', 987654, 0)}")
    assert unknown.status_code == 404
    for bad in [*bad_tokens(link, "c"), pixel, their_unsub]:
        for method in ("GET", "HEAD"):
            response = client.request(method, f"/t/c/{bad}")
            assert response.status_code == 404, bad
            if method == "GET":
                assert response.content == unknown.content
    for bad in [*bad_tokens(their_unsub, "u"), pixel, link]:
        post = client.post(f"/t/u/{bad}", content=tokens.UNSUBSCRIBE_POST)
        assert (post.status_code, post.content) == (404, unknown.content)
        assert client.get(f"/t/u/{bad}").content == unknown.content
    # Their unsubscribe token, spliced onto my message: refused; their click token still
    # only ever leads to their own link and records on their own message.
    post = client.post(f"/t/u/{splice(their_unsub, mine)}", content=tokens.UNSUBSCRIBE_POST)
    assert post.status_code == 404
    after = counts(engine)
    assert after == before
    response = client.get(f"/t/c/{their_link}", headers={"User-Agent": FIREFOX})
    assert response.headers["location"] == "https://shop.example/orders/42?x=1&y=2"
    assert status_of(engine, their_id) == "clicked" and status_of(engine, mine) == "opened"


async def test_no_redirect_to_a_url_that_was_not_in_the_message(
    sim: Simulator,
    tsettings: Settings,
    engine: Engine,
    account_key: tuple[accounts.Account, str],
    client: TestClient,
) -> None:
    mid = submit(engine, account_key[0], "alice@example.test")
    await deliver(tsettings, engine)
    link = link_paths(html_of(received(sim, "alice@example.test")))[0]
    before = counts(engine)
    for path in (
        f"/t/c/{tokens.sign(SECRET, 'c', mid, 2)}",  # the notrack link is not a target
        f"/t/c/{tokens.sign(SECRET, 'c', mid, 3)}",
        f"/t/c/{tokens.sign(SECRET, 'c', mid, 2**40)}",
        f"{link}/https://evil.example/",
        f"{link}%2Fhttps:%2F%2Fevil.example",
    ):
        assert client.get(path).status_code == 404
    assert counts(engine) == before
    response = client.get(
        link, params={"url": "https://evil.example/", "to": "https://evil.example/"}
    )
    assert response.headers["location"] == "https://shop.example/orders/42?x=1&y=2"


async def test_apple_proxy_open_and_scanner_click_are_machine(
    sim: Simulator,
    tsettings: Settings,
    engine: Engine,
    account_key: tuple[accounts.Account, str],
) -> None:
    mid = submit(engine, account_key[0], "alice@example.test")
    await deliver(tsettings, engine)
    html = html_of(received(sim, "alice@example.test"))
    apple = http(tsettings, engine, "17.58.0.1")
    assert apple.get(pixel_path(html), headers={"User-Agent": "Mozilla/5.0"}).status_code == 200
    (opened,) = events(engine, mid, "opened")
    assert opened.data["machine"] is True and opened.data["rule"] == "apple-mpp"
    assert opened.data["ip_class"] == "apple-private-relay"
    assert "17.58.0.1" not in str(opened.data)  # the address itself is never kept
    assert status_of(engine, mid) == "opened"  # recorded, flagged, and still an open

    scanner = http(tsettings, engine, "203.0.113.9")
    first, second = link_paths(html)
    response = scanner.get(first, headers={"User-Agent": FIREFOX})  # seconds after delivery
    assert response.status_code == 302
    response = scanner.head(second, headers={"User-Agent": FIREFOX})
    assert response.status_code == 302
    assert response.headers["location"] == "https://shop.example/help"
    clicks = events(engine, mid, "clicked")
    assert [(c.data["machine"], c.data["rule"]) for c in clicks] == [
        (True, "prefetch-after-delivery"),
        (True, "head-request"),
    ]

    delivered_ago(engine, 3600)  # an hour later, a person clicks
    with engine.begin() as conn:
        conn.execute(
            update(t.events)
            .where(t.events.c.kind == "clicked")
            .values(occurred_at=clock.now() - timedelta(seconds=3590))
        )
    person = http(tsettings, engine, "198.51.100.20")
    person.get(first, headers={"User-Agent": FIREFOX})
    last = events(engine, mid, "clicked")[-1]
    assert (last.data["machine"], last.data["rule"]) == (False, "default")


async def test_one_click_unsubscribe(
    sim: Simulator,
    tsettings: Settings,
    engine: Engine,
    account_key: tuple[accounts.Account, str],
    client: TestClient,
) -> None:
    account = account_key[0]
    broadcast(engine, account, ["alice@example.test", "bob@example.test"], "newsletter")
    broadcast(engine, account, ["carol@example.test"], "password")  # transactional
    single = submit(engine, account, "dave@example.test", category="newsletter")
    await deliver(tsettings, engine)
    assert received(sim, "carol@example.test")["List-Unsubscribe"] is None
    assert received(sim, "dave@example.test")["List-Unsubscribe"] is None
    assert single
    msg = received(sim, "alice@example.test")
    header = msg["List-Unsubscribe"]
    assert header.startswith(f"<{BASE}/t/u/") and header.endswith(">")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    path = urlsplit(header.strip("<>")).path
    with engine.connect() as conn:
        alice = conn.scalar(
            select(t.messages.c.id).where(t.messages.c.to_addr == "alice@example.test")
        )

    page = client.get(path)  # GET shows a button and never unsubscribes
    assert page.status_code == 200 and '<form method="post"' in page.text
    assert counts(engine)[1] == 0

    fresh = http(tsettings, engine, "192.0.2.7")
    for _ in range(2):  # idempotent
        response = fresh.post(
            path,
            content=tokens.UNSUBSCRIBE_POST,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200 and "unsubscribed" in response.text
        assert "set-cookie" not in response.headers
    assert not fresh.cookies
    assert len(events(engine, alice, "unsubscribed")) == 1
    with engine.connect() as conn:
        rows = conn.execute(select(t.suppressions)).all()
    assert [(r.address, r.category, r.reason) for r in rows] == [
        ("alice@example.test", "newsletter", "unsubscribe")
    ]
    with engine.connect() as conn:
        item = queries.message_detail(conn, account.id, alice)
    assert "unsubscribed" in item["flags"]

    later = broadcast(engine, account, ["alice@example.test", "bob@example.test"], "newsletter")
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(
                select(t.messages.c.to_addr, t.messages.c.status).where(
                    t.messages.c.broadcast_id == later
                )
            ).all()
        )
    assert statuses == {"alice@example.test": "dropped", "bob@example.test": "pending"}
    other = submit(engine, account, "alice@example.test", category="billing")
    assert status_of(engine, other) == "pending"


async def test_tracking_off_per_message_and_per_account(
    sim: Simulator,
    tsettings: Settings,
    engine: Engine,
    account_key: tuple[accounts.Account, str],
    client: TestClient,
) -> None:
    account, key = account_key
    submit(engine, account, "off@example.test", track=False)
    response = client.patch(
        "/v1/account", json={"tracking": False}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200 and response.json()["tracking"] is False
    submit(engine, account, "account-off@example.test")
    submit(engine, account, "forced-on@example.test", track=True)
    await deliver(tsettings, engine)
    for to in ("off@example.test", "account-off@example.test"):
        html = html_of(received(sim, to))
        assert "/t/o/" not in html and "/t/c/" not in html
        assert 'href="https://shop.example/help"' in html
    html = html_of(received(sim, "forced-on@example.test"))
    assert "/t/o/" in html and len(link_paths(html)) == 2


async def test_text_links_when_configured(
    sim: Simulator,
    tsettings: Settings,
    engine: Engine,
    account_key: tuple[accounts.Account, str],
    client: TestClient,
) -> None:
    configured = tsettings.model_copy(update={"track_text_links": True})
    mid = submit(engine, account_key[0], "alice@example.test", text=TEXT)
    await deliver(configured, engine)
    msg = received(sim, "alice@example.test")
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    (url,) = re.findall(re.escape(BASE) + r"/t/c/\S+", text)
    assert tokens.verify(SECRET, "c", url.rsplit("/", 1)[1]) == (mid, 2)  # after HTML links
    response = client.get(urlsplit(url).path)
    assert response.headers["location"] == "https://shop.example/orders/42"


async def test_reports_count_human_and_machine_apart(
    sim: Simulator,
    tsettings: Settings,
    engine: Engine,
    account_key: tuple[accounts.Account, str],
    client: TestClient,
) -> None:
    account, key = account_key
    auth = {"Authorization": f"Bearer {key}"}
    bid = broadcast(engine, account, [f"r{i}@example.test" for i in range(4)], "news")
    broadcast(engine, account, ["s0@example.test", "s1@example.test"], "offers")
    await deliver(tsettings, engine)
    delivered_ago(engine, 600)
    person = http(tsettings, engine, "198.51.100.20")
    apple = http(tsettings, engine, "17.58.0.1")
    r0, r1, r2 = (html_of(received(sim, f"r{i}@example.test")) for i in range(3))
    person.get(pixel_path(r0), headers={"User-Agent": FIREFOX})
    person.get(link_paths(r0)[0], headers={"User-Agent": FIREFOX})
    apple.get(pixel_path(r1), headers={"User-Agent": "Mozilla/5.0"})
    apple.get(pixel_path(r2), headers={"User-Agent": "Mozilla/5.0"})
    person.head(link_paths(r2)[0], headers={"User-Agent": FIREFOX})  # a link checker
    s0 = html_of(received(sim, "s0@example.test"))
    person.get(pixel_path(s0), headers={"User-Agent": FIREFOX})

    report = client.get("/v1/reports/engagement", params={"group": "broadcast"}, headers=auth)
    assert report.status_code == 200, report.text
    rows = {r["key"]: r for r in report.json()["rows"]}
    news = rows[bid]
    assert news["subject"] == "News" and news["category"] == "news"
    assert {k: news[k] for k in ("sent", "delivered", "opened_human", "opened_all")} == {
        "sent": 4,
        "delivered": 4,
        "opened_human": 1,
        "opened_all": 3,
    }
    assert (news["clicked_human"], news["clicked_all"]) == (1, 2)
    assert (news["open_rate_human"], news["open_rate_all"]) == (0.25, 0.75)
    assert (news["click_rate_human"], news["click_rate_all"]) == (0.25, 0.5)

    by_category = client.get(
        "/v1/reports/engagement", params={"group": "category"}, headers=auth
    ).json()
    assert [r["category"] for r in by_category["categories_read_most"]] == ["offers", "news"]
    assert by_category["categories_read_most"][0]["open_rate_human"] == 0.5
    by_day = client.get("/v1/reports/engagement", params={"group": "day"}, headers=auth).json()
    (today,) = by_day["rows"]
    assert today["key"] == clock.now().date().isoformat()
    assert (today["sent"], today["opened_human"], today["opened_all"]) == (6, 2, 4)
    assert client.get("/v1/reports/engagement", params={"group": "x"}, headers=auth).status_code
    assert client.get("/v1/reports/engagement").status_code == 401


def test_skeleton_matches_instrumenting_each_message() -> None:
    content_html = HTML + '<p><a href="https://shop.example/a">again</a></p>'
    settings = Settings(tracking_base_url=BASE)
    from postwarden.outbound.channels.email.compose import Content

    content = Content("shop@acme.test", "", "s", TEXT, content_html)
    for message_id in (1, 77, 2**40):
        prepared = email_tracking.prepare(
            settings=settings,
            secret=SECRET,
            message_id=message_id,
            content_id=5,
            content=content,
            track=True,
            broadcast_id=None,
            category="",
        )
        expected = links.instrument_html(
            content_html, base_url=BASE, secret=SECRET, message_id=message_id
        )
        assert prepared.html == expected.html
        assert prepared.text is None and prepared.headers == ()
    assert links.links_of(SECRET, BASE, content_html, None) == expected.links
