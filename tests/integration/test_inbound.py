"""The inbound SMTP server and the applying of what it stores, over real SMTP, on both DBs."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiosmtplib
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select, update

from postwarden.domain import clock, verp
from postwarden.domain.status import Kind
from postwarden.inbound.mail import apply, dsn, worker
from postwarden.inbound.mail.server import InboundServer
from postwarden.intake import accept, schemas
from postwarden.outbound import registry
from postwarden.outbound.dispatcher import Dispatcher
from postwarden.runtime import Parts
from postwarden.service import running_inbound
from postwarden.settings import Settings
from postwarden.store import accounts, inbound_queue, recorder, suppression
from postwarden.store import tables as t
from postwarden.testing.simulator import Simulator, build_dsn

BOUNCE_DOMAIN = "bounces.acme.test"
POLICY = suppression.Policy()
LIMITS = accept.Limits(10_000_000, 200_000)


# region helpers


def secret_of(settings: Settings) -> bytes:
    assert settings.secret_key is not None
    return settings.secret_key.get_secret_value().encode()


@pytest.fixture
def parts(settings: Settings, engine: Engine) -> Parts:
    return Parts(settings, engine, secret_of(settings))


@pytest.fixture
def account(account_key: tuple[accounts.Account, str]) -> accounts.Account:
    return account_key[0]


@pytest.fixture
async def server(parts: Parts) -> AsyncIterator[InboundServer]:
    async with InboundServer(parts, host="127.0.0.1", port=0) as srv:
        yield srv


def submit(engine: Engine, account: accounts.Account, to: str) -> schemas.Accepted:
    body = schemas.MessageIn.model_validate(
        {"from": "shop@acme.test", "to": to, "subject": "Your order", "text": "hello"}
    )
    with engine.begin() as conn:
        return accept.submit_message(conn, account, body, LIMITS)


def make_message(engine: Engine, account: accounts.Account, to: str, reached: Kind) -> int:
    """A message that was attempted and then ``reached`` (RELAYED: sent, DELIVERED)."""
    message_id = submit(engine, account, to).id
    with engine.begin() as conn:
        recorder.record(
            conn,
            [
                recorder.Fact(message_id, Kind.ATTEMPT, "smtp", dedupe_key="attempt"),
                recorder.Fact(message_id, reached, "smtp", dedupe_key="attempt:1"),
            ],
            policy=POLICY,
        )
    return message_id


def original(secret: bytes, message_id: int, to: str, *, token: bool = True) -> bytes:
    """The headers of the message as Postwarden sent it (what a DSN quotes back)."""
    tok = verp.token(secret, message_id)
    lines = [
        f"Return-Path: <b+{tok}@{BOUNCE_DOMAIN}>",
        "From: shop@acme.test",
        f"To: <{to}>",
        "Subject: Your order",
    ]
    if token:
        lines += [f"Message-ID: <{tok}@{BOUNCE_DOMAIN}>", f"X-Postwarden-Id: {tok}"]
    else:
        lines += ["Message-ID: <unrelated.1@acme.test>"]
    return ("\r\n".join(lines) + "\r\n\r\nhello\r\n").encode()


def dsn_for(
    secret: bytes,
    message_id: int,
    to: str,
    *,
    status: str = "5.1.1",
    diagnostic: str | None = None,
    action: str = "failed",
    token: bool = True,
) -> bytes:
    if diagnostic is None:
        diagnostic = f"550 5.1.1 <{to}>: Recipient address rejected: User unknown"
    return build_dsn(
        reporting_mta="mx.example.test",
        original=original(secret, message_id, to, token=token),
        recipient=to,
        status=status,
        diagnostic=diagnostic,
        action=action,
        sender=verp.address(secret, message_id, BOUNCE_DOMAIN),
    )


def arf_for(secret: bytes, message_id: int, to: str, feedback_type: str = "abuse") -> bytes:
    boundary = "ARF-BOUNDARY-1"
    head = original(secret, message_id, to).split(b"\r\n\r\n", 1)[0].decode()
    return (
        "From: feedback@fbl.example.net\r\n"
        f"To: fbl@{BOUNCE_DOMAIN}\r\n"
        "Subject: FW: Your order\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "This is an email abuse report for an email message received.\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/feedback-report\r\n"
        "\r\n"
        f"Feedback-Type: {feedback_type}\r\n"
        "User-Agent: ExampleFBL/1.0\r\n"
        "Version: 1\r\n"
        f"Original-Rcpt-To: {to}\r\n"
        "Source-IP: 192.0.2.1\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        f"{head}\r\n"
        f"--{boundary}--\r\n"
    ).encode()


async def smtp_send(
    port: int, rcpts: list[str], data: bytes, sender: str = "", source: str = "127.0.0.1"
) -> tuple[int, str]:
    """One SMTP transaction (from the loopback address ``source``); returns the reply to DATA
    (RCPT refusals raise)."""
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        start_tls=False,
        timeout=10,
        source_address=(source, 0),
    )
    await client.connect()
    try:
        await client.mail(sender)
        for rcpt in rcpts:
            await client.rcpt(rcpt)
        reply = await client.data(data)
        await client.quit()
        return reply.code, reply.message
    finally:
        client.close()


def on_the_wire(raw: bytes) -> bytes:
    """What an SMTP client transmits: CRLF line ends, a final CRLF."""
    raw = re.sub(rb"\r\n|\n|\r(?!\n)", b"\r\n", raw)
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


async def process(parts: Parts) -> int:
    return await asyncio.to_thread(apply.process_pending, parts)


def inbound_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(t.inbound_mails).order_by(t.inbound_mails.c.id)))


def message(engine: Engine, message_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(t.messages).where(t.messages.c.id == message_id)).one()


def events(engine: Engine, message_id: int, source: str | None = None) -> list[Any]:
    query = select(t.events).where(t.events.c.message_id == message_id)
    if source:
        query = query.where(t.events.c.source == source)
    with engine.connect() as conn:
        return list(conn.execute(query.order_by(t.events.c.id)))


def suppressed(engine: Engine, account_id: int, address: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(t.suppressions).where(
                t.suppressions.c.account_id == account_id, t.suppressions.c.address == address
            )
        ).first()


# endregion

# region the SMTP conversation


async def test_verp_bounce_is_accepted_and_applied(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    mid = make_message(engine, account, "gone@example.test", Kind.RELAYED)
    verp_addr = verp.address(parts.secret, mid, BOUNCE_DOMAIN)
    code, _ = await smtp_send(
        server.port, [verp_addr], dsn_for(parts.secret, mid, "gone@example.test")
    )
    assert code == 250
    (stored,) = inbound_rows(engine)
    assert stored.state == "new"
    assert stored.rcpt_to == [verp_addr]
    assert stored.mail_from == ""
    assert stored.peer.startswith("127.0.0.1:")

    assert await process(parts) == 1
    row = message(engine, mid)
    assert row.status == "bounced"
    assert row.reason == "userunknown"
    (event,) = events(engine, mid, "dsn")
    assert event.kind == "bounced"
    assert event.inbound_id == stored.id
    assert event.hard is True
    assert event.reason == "userunknown"
    assert event.code == "5.1.1"
    assert event.data["matched_by"] == "verp"
    entry = suppressed(engine, account.id, "gone@example.test")
    assert entry is not None and entry.reason == "userunknown" and entry.message_id == mid
    (done,) = inbound_rows(engine)
    assert (done.state, done.kind, done.account_id) == ("done", "bounce", account.id)
    assert await process(parts) == 0


async def test_unknown_recipients_are_refused_at_rcpt(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    mid = make_message(engine, account, "x@example.test", Kind.RELAYED)
    token = verp.token(parts.secret, mid)
    for rcpt in (
        f"someone@{BOUNCE_DOMAIN}",  # not a catch-all
        f"b+{token}@other.test",  # not a relay
        f"b+{token}@sub.{BOUNCE_DOMAIN}",
        "postmaster@example.test",
    ):
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await smtp_send(server.port, [rcpt], b"Subject: x\r\n\r\nx\r\n")
        assert refused.value.code == 550
        assert "5.1.1" in refused.value.message
    assert inbound_rows(engine) == []
    # The feedback addresses are accepted (case-insensitively).
    code, _ = await smtp_send(
        server.port, [f"FBL@{BOUNCE_DOMAIN.upper()}"], b"Subject: x\r\n\r\nx\r\n"
    )
    assert code == 250
    assert len(inbound_rows(engine)) == 1


async def test_forged_verp_token_is_refused(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    mid = make_message(engine, account, "x@example.test", Kind.RELAYED)
    forged = verp.address(b"not-the-secret", mid, BOUNCE_DOMAIN)
    real = verp.address(parts.secret, mid, BOUNCE_DOMAIN)
    tampered = real.replace("b+", "b+a", 1)
    for rcpt in (forged, tampered, f"b+@{BOUNCE_DOMAIN}", f"b+!!!@{BOUNCE_DOMAIN}"):
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await smtp_send(server.port, [rcpt], b"Subject: x\r\n\r\nx\r\n")
        assert refused.value.code == 550
    assert inbound_rows(engine) == []


async def test_new_account_domain_is_accepted_within_seconds(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    # The cache is filled first; the new domain must not wait for it to expire.
    await smtp_send(server.port, [f"fbl@{BOUNCE_DOMAIN}"], b"Subject: x\r\n\r\nx\r\n")
    with engine.begin() as conn:
        other, _ = accounts.create(conn, "globex", "bounces.globex.test")
    mid = make_message(engine, other, "x@example.test", Kind.RELAYED)
    rcpt = verp.address(parts.secret, mid, "bounces.globex.test")
    deadline = time.monotonic() + 2
    while True:
        try:
            code, _ = await smtp_send(server.port, [rcpt], b"Subject: x\r\n\r\nx\r\n")
            break
        except aiosmtplib.SMTPRecipientRefused:
            assert time.monotonic() < deadline, "new bounce domain still refused"
            await asyncio.sleep(0.2)
    assert code == 250


async def test_oversized_message_is_refused_with_552(
    settings: Settings, engine: Engine, account: accounts.Account
) -> None:
    small = settings.model_copy(update={"inbound_max_bytes": 4000})
    parts = Parts(small, engine, secret_of(settings))
    mid = make_message(engine, account, "x@example.test", Kind.RELAYED)
    rcpt = verp.address(parts.secret, mid, BOUNCE_DOMAIN)
    big = b"Subject: big\r\n\r\n" + b"y" * 70 + b"\r\n"
    big = big * 100
    async with InboundServer(parts, host="127.0.0.1", port=0) as srv:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp_send(srv.port, [rcpt], big)
        assert refused.value.code == 552
        assert "5.3.4" in refused.value.message
        # The connection stays usable, and a mail within the limit goes through.
        code, _ = await smtp_send(srv.port, [rcpt], b"Subject: small\r\n\r\nok\r\n")
        assert code == 250
    assert len(inbound_rows(engine)) == 1


async def test_data_is_stored_as_sent_however_it_arrives(
    server: InboundServer, engine: Engine, account: accounts.Account
) -> None:
    """The DATA reader takes the mail in chunks: split writes, dot-stuffed lines, lines ending
    with a dot, an empty mail, a mail longer than a read, lines far longer than RFC 5321's
    1,000 octets and than the reader's buffer, and commands sent right behind the end all give
    back exactly what the client meant, and each mail its own reply."""
    mails = [
        b"Subject: dots\r\n\r\n..starts with a dot\r\nends with a dot.\r\n.\r\nx.\r\n",
        b"",
        b"Subject: long\r\n\r\n" + b"0123456789abcdef.\r\n" * 4000,  # ~76 KB
        b"Subject: no dots\r\n\r\n" + (b"x" * 70 + b"\r\n") * 400,  # longer than a read
        b".\r\n",  # one line holding a single dot
        b"Subject: wide\r\n\r\n" + b"w" * 20_000 + b"\r\n",  # over the old 16 KiB limit
        b"Subject: wider\r\n\r\n" + b"v." * 100_000 + b"\r\n" + b"u" * 50_000 + b".\r\n",
    ]
    rcpt = f"fbl@{BOUNCE_DOMAIN}"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

    async def reply() -> bytes:
        line = await asyncio.wait_for(reader.readline(), 10)
        while line[3:4] == b"-":
            line = await asyncio.wait_for(reader.readline(), 10)
        return line

    try:
        assert (await reply()).startswith(b"220 ")
        writer.write(b"EHLO client.test\r\n")
        assert (await reply()).startswith(b"250 ")
        for mail in mails:
            writer.write(f"MAIL FROM:<>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
            assert [(await reply())[:3] for _ in range(3)] == [b"250", b"250", b"354"]
            stuffed = re.sub(rb"(?m)^\.", b"..", mail) + b".\r\n"
            for i in range(0, len(stuffed), 7):  # the terminator split across writes too
                writer.write(stuffed[i : i + 7])
                await writer.drain()
            assert (await reply()).startswith(b"250 ")
        # The end of the data and the next commands in one write.
        writer.write(b"MAIL FROM:<>\r\nRCPT TO:<" + rcpt.encode() + b">\r\nDATA\r\n")
        assert [(await reply())[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        writer.write(b"Subject: last\r\n\r\nbye\r\n.\r\nNOOP\r\n")
        assert (await reply()).startswith(b"250 2.0.0 Ok: queued")
        assert (await reply()).startswith(b"250 ")  # the NOOP
        writer.write(b"QUIT\r\n")
        assert (await reply()).startswith(b"221 ")
    finally:
        writer.close()
    assert [bytes(r.raw) for r in inbound_rows(engine)] == [
        *mails,
        b"Subject: last\r\n\r\nbye\r\n",
    ]


async def test_mails_stored_together_each_get_their_own_id(
    server: InboundServer, engine: Engine, account: accounts.Account
) -> None:
    """Mails whose DATA ends at the same time are stored in one transaction (one INSERT);
    each sender's "queued as" still names the row holding its own mail."""
    mails = [f"Subject: mail {i}\r\n\r\n{'x' * i}\r\n".encode() for i in range(24)]
    replies = await asyncio.gather(
        *(smtp_send(server.port, [f"fbl@{BOUNCE_DOMAIN}"], mail) for mail in mails)
    )
    stored = {r.id: bytes(r.raw) for r in inbound_rows(engine)}
    queued = [int(message.rsplit(" ", 1)[1]) for _code, message in replies]
    assert [stored[i] for i in queued] == mails


async def test_connection_limit_answers_421(
    settings: Settings, engine: Engine, account: accounts.Account
) -> None:
    limited = settings.model_copy(update={"inbound_max_connections": 1})
    parts = Parts(limited, engine, secret_of(settings))
    async with InboundServer(parts, host="127.0.0.1", port=0) as srv:
        first = aiosmtplib.SMTP(hostname="127.0.0.1", port=srv.port, start_tls=False, timeout=5)
        await first.connect()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            greeting = await asyncio.wait_for(reader.readline(), 5)
            assert greeting.startswith(b"421 ")
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            writer.close()
        finally:
            first.close()
        deadline = time.monotonic() + 3
        while True:  # the server notices the first connection's end a moment later
            try:
                code, _ = await smtp_send(
                    srv.port, [f"fbl@{BOUNCE_DOMAIN}"], b"Subject: x\r\n\r\nx\r\n"
                )
                break
            except aiosmtplib.SMTPException:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        assert code == 250


async def test_idle_sockets_from_one_client_keep_no_one_else_out(
    settings: Settings, engine: Engine, account: accounts.Account, parts: Parts
) -> None:
    """Issue 13: 100 idle sockets from one client got every legitimate bounce a 421 for 60 s.
    One client address holds at most its share (the rest of its connections get 421, try
    again later); another client's bounce is taken and applied meanwhile."""
    mid = make_message(engine, account, "gone@example.test", Kind.RELAYED)
    async with InboundServer(parts, host="127.0.0.1", port=0) as srv:
        assert (srv.max_connections, srv.max_per_client) == (100, 50)
        idle = []
        try:
            greetings = []
            for _ in range(100):
                reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
                idle.append(writer)
                greetings.append((await asyncio.wait_for(reader.readline(), 5))[:4])
            assert greetings.count(b"220 ") == 50
            assert greetings.count(b"421 ") == 50
            rcpt = verp.address(parts.secret, mid, BOUNCE_DOMAIN)
            raw = dsn_for(parts.secret, mid, "gone@example.test")
            code, _ = await smtp_send(srv.port, [rcpt], raw, source="127.0.0.2")
            assert code == 250
            with pytest.raises(aiosmtplib.SMTPConnectResponseError) as refused:
                await smtp_send(srv.port, [rcpt], raw)  # the busy client itself: later
            assert refused.value.code == 421
        finally:
            for writer in idle:
                writer.close()
    assert await process(parts) == 1
    assert message(engine, mid).status == "bounced"


async def test_a_fault_in_a_session_is_a_temporary_failure(
    server: InboundServer,
    parts: Parts,
    engine: Engine,
    account: accounts.Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unexpected exception while handling a command is ours, not the sender's: 451 (try
    again later), never aiosmtpd's "500 Error: (...)" that makes the sender drop the bounce;
    the session goes on."""
    from postwarden.inbound.mail import server as inbound_server

    async def broken(*args: Any) -> str:
        raise RuntimeError("handler exploded")

    monkeypatch.setattr(inbound_server._Handler, "handle_DATA", broken)
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await smtp_send(server.port, [f"fbl@{BOUNCE_DOMAIN}"], b"Subject: x\r\n\r\nx\r\n")
    assert (refused.value.code, refused.value.message) == (
        451,
        "4.3.0 Temporary failure, try again later",
    )
    monkeypatch.undo()
    code, _ = await smtp_send(server.port, [f"fbl@{BOUNCE_DOMAIN}"], b"Subject: y\r\n\r\ny\r\n")
    assert code == 250
    assert [bytes(r.raw) for r in inbound_rows(engine)] == [b"Subject: y\r\n\r\ny\r\n"]


async def test_idle_connection_times_out(
    settings: Settings, engine: Engine, account: accounts.Account
) -> None:
    quick = settings.model_copy(update={"inbound_timeout": 0.3})
    parts = Parts(quick, engine, secret_of(settings))
    async with InboundServer(parts, host="127.0.0.1", port=0) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        assert (await reader.readline()).startswith(b"220 ")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


# endregion

# region what the reports do


async def test_mangled_mime_is_kept_raw_and_ends_as_it_reads(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    """Damaged mails are stored as they came. One whose delivery status survived is applied;
    the others are "unmatched", still tied to the message their VERP address names."""
    samples: list[tuple[bytes, str, str]] = []
    mids = []
    for n in range(5):
        to = f"mangled{n}@example.test"
        mid = make_message(engine, account, to, Kind.RELAYED)
        good = dsn_for(parts.secret, mid, to)
        mids.append(mid)
        samples.append(
            [
                (
                    bytes(range(256)).replace(b"\r", b"").replace(b"\n", b"\r\n"),
                    "unmatched",
                    "sent",
                ),
                # cut inside the returned headers: the delivery status is whole
                (good[: good.index(b"Subject: Your order")], "done", "bounced"),
                (
                    b'Content-Type: multipart/report; boundary="nope"\r\n\r\n--nope\r\n'
                    b"Content-Type: message/delivery-status\r\n\r\nFinal-Recipient: rfc822;",
                    "unmatched",
                    "sent",
                ),
                (b"\x00\xff\xfe garbage \x80\r\n", "unmatched", "sent"),
                (good.replace(b"5.1.1", b"5.x.1").replace(b"550", b"5x0"), "done", "bounced"),
            ][n]
        )
    for mid, (raw, _state, _status) in zip(mids, samples, strict=True):
        rcpt = verp.address(parts.secret, mid, BOUNCE_DOMAIN)
        code, _ = await smtp_send(server.port, [rcpt], raw)
        assert code == 250
    assert await process(parts) == len(samples)
    rows = inbound_rows(engine)
    assert [bytes(r.raw) for r in rows] == [on_the_wire(raw) for raw, _s, _t in samples]
    assert [(r.state, r.message_id) for r in rows] == [
        (state, mid) for mid, (_raw, state, _t) in zip(mids, samples, strict=True)
    ]
    assert [message(engine, mid).status for mid in mids] == [t for _r, _s, t in samples]
    assert message(engine, mids[1]).reason == "userunknown"


_examples = itertools.count()
_fuzzed = hsettings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_fuzzed
@given(
    junk=st.binary(max_size=300),
    cut=st.integers(min_value=0, max_value=4000),
    at=st.integers(min_value=0, max_value=4000),
)
def test_damage_after_the_delivery_status_still_bounces(
    parts: Parts, engine: Engine, account: accounts.Account, junk: bytes, cut: int, at: int
) -> None:
    """A DSN cut short or garbled anywhere after its delivery-status part (in the returned
    headers, where mailers truncate and mangle) is still read and applied: the message is
    bounced with the reason its status gives."""
    to = f"h{next(_examples)}@example.test"  # the database outlives each example
    mid = make_message(engine, account, to, Kind.RELAYED)
    good = dsn_for(parts.secret, mid, to)
    after = good.index(b"Content-Description: Undelivered Message Headers")
    kept = good[: after + cut]
    at = min(after + at, len(kept))
    raw = kept[:at] + junk + kept[at:]
    rcpt = verp.address(parts.secret, mid, BOUNCE_DOMAIN)
    inbound_id = InboundServer(parts, host="127.0.0.1", port=0).store("p", "", [rcpt], raw)
    apply.process_pending(parts)
    with engine.connect() as conn:
        row = conn.execute(select(t.inbound_mails).where(t.inbound_mails.c.id == inbound_id)).one()
    assert bytes(row.raw) == raw
    assert (row.state, row.kind, row.error) == ("done", "bounce", None)
    found = message(engine, mid)
    assert (found.status, found.reason) == ("bounced", "userunknown")


@_fuzzed
@given(
    junk=st.binary(max_size=300),
    cut=st.integers(min_value=0, max_value=4000),
    at=st.integers(min_value=0, max_value=4000),
    use_dsn=st.booleans(),
)
def test_random_and_truncated_mime_end_as_the_parser_reads_them(
    parts: Parts,
    engine: Engine,
    account: accounts.Account,
    junk: bytes,
    cut: int,
    at: int,
    use_dsn: bool,
) -> None:
    """Whatever the damage, the stored mail ends as its parse says: "error" (with the
    exception's text) exactly when the parser fails, "done" and the message bounced when it
    finds a bounce, "unmatched" (still tied to the VERP address's message) when it finds
    nothing; the raw mail is kept either way."""
    to = f"r{next(_examples)}@example.test"
    mid = make_message(engine, account, to, Kind.RELAYED)
    rcpt = verp.address(parts.secret, mid, BOUNCE_DOMAIN)
    if use_dsn:
        good = dsn_for(parts.secret, mid, to)[:cut]
        raw = good[:at] + junk + good[at:]
    else:
        raw = junk
    try:
        report: dsn.Report | None = dsn.parse(raw)
    except Exception:
        report = None
    inbound_id = InboundServer(parts, host="127.0.0.1", port=0).store("p", "", [rcpt], raw)
    apply.process_pending(parts)
    with engine.connect() as conn:
        row = conn.execute(select(t.inbound_mails).where(t.inbound_mails.c.id == inbound_id)).one()
    assert bytes(row.raw) == raw
    assert row.message_id == mid and row.account_id == account.id
    status = message(engine, mid).status
    if report is None:
        assert row.state == "error" and row.error
        assert status == "sent"
    elif any(r.kind is dsn.Kind.BOUNCE for r in report.recipients):
        assert (row.state, row.kind, status) == ("done", "bounce", "bounced")
    elif report.recipients:
        assert row.state == "done" and status in ("sent", "delivered")
    elif report.kind is dsn.Kind.AUTOREPLY:
        assert (row.state, row.kind, status) == ("done", "autoreply", "sent")
    else:
        assert (row.state, row.kind, status) == ("unmatched", report.kind.value, "sent")


async def test_large_mail_is_kept_whole_and_applied(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    """The applying reads only the start of each mail (all the parser looks at); the stored
    raw mail stays whole."""
    mid = make_message(engine, account, "big@example.test", Kind.RELAYED)
    raw = dsn_for(parts.secret, mid, "big@example.test") + b"padding line\r\n" * 30_000
    assert len(raw) > 3 * dsn.READ_BYTES
    rcpt = verp.address(parts.secret, mid, BOUNCE_DOMAIN)
    code, _ = await smtp_send(server.port, [rcpt], raw)
    assert code == 250
    assert await process(parts) == 1
    (row,) = inbound_rows(engine)
    assert bytes(row.raw) == raw
    assert row.state == "done"
    assert message(engine, mid).status == "bounced"


async def test_parser_fault_marks_error_and_keeps_raw(
    server: InboundServer,
    parts: Parts,
    engine: Engine,
    account: accounts.Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fault inside the parser (here: in its MIME walk) reaches the applying, which stores
    the mail as "error" with the exception's text, for the account and message its VERP
    address names; the raw mail stays and the message is unchanged. The other mails of the
    batch are applied."""

    def broken(*args: Any) -> None:
        raise RuntimeError("parser exploded")

    mid = make_message(engine, account, "x@example.test", Kind.RELAYED)
    other = make_message(engine, account, "y@example.test", Kind.RELAYED)
    raw = dsn_for(parts.secret, mid, "x@example.test")
    code, _ = await smtp_send(server.port, [verp.address(parts.secret, mid, BOUNCE_DOMAIN)], raw)
    assert code == 250  # stored before any parsing
    unhurt = dsn_for(parts.secret, other, "y@example.test")
    await smtp_send(server.port, [verp.address(parts.secret, other, BOUNCE_DOMAIN)], unhurt)
    real_walk = dsn._walk
    calls = itertools.count()
    # Only the first mail's walk fails (the walk recurses: count top-level calls).
    monkeypatch.setattr(
        dsn,
        "_walk",
        lambda part, found, depth=0: (
            broken() if depth == 0 and next(calls) == 0 else real_walk(part, found, depth)
        ),
    )
    assert await process(parts) == 2
    first, second = inbound_rows(engine)
    assert first.state == "error"
    assert first.error.startswith("RuntimeError: parser exploded (in broken, ")
    assert (first.account_id, first.message_id, first.kind) == (account.id, mid, None)
    assert bytes(first.raw) == raw
    assert message(engine, mid).status == "sent"
    assert events(engine, mid, "dsn") == []
    assert (second.state, second.error) == ("done", None)
    assert message(engine, other).status == "bounced"


async def test_unreadable_mail_to_a_feedback_address_is_the_accounts(
    server: InboundServer,
    parts: Parts,
    engine: Engine,
    account: accounts.Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a VERP address the unreadable mail still belongs to the account whose bounce
    domain received it (its operators are shown it)."""

    def broken(raw: bytes) -> Any:
        raise ValueError("cannot read this")

    monkeypatch.setattr(dsn, "_parse", broken)
    await smtp_send(server.port, [f"postmaster@{BOUNCE_DOMAIN}"], b"Subject: x\r\n\r\nx\r\n")
    await process(parts)
    (row,) = inbound_rows(engine)
    assert (row.state, row.account_id, row.message_id) == ("error", account.id, None)
    assert row.error.startswith("ValueError: cannot read this (in broken, ")


async def test_same_dsn_twice_changes_nothing(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    mid = make_message(engine, account, "gone@example.test", Kind.RELAYED)
    raw = dsn_for(parts.secret, mid, "gone@example.test")
    rcpt = verp.address(parts.secret, mid, BOUNCE_DOMAIN)
    await smtp_send(server.port, [rcpt], raw)
    await process(parts)
    before = message(engine, mid)
    await smtp_send(server.port, [rcpt], raw)
    await process(parts)
    after = message(engine, mid)
    assert len(events(engine, mid, "dsn")) == 1
    assert (after.status, after.reason, after.flags, after.updated_at) == (
        before.status,
        before.reason,
        before.flags,
        before.updated_at,
    )
    assert [r.state for r in inbound_rows(engine)] == ["done", "done"]
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(t.suppressions)) == 1


async def test_arf_complaint_suppresses(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    mid = make_message(engine, account, "angry@example.test", Kind.DELIVERED)
    raw = arf_for(parts.secret, mid, "angry@example.test")
    code, _ = await smtp_send(server.port, [f"fbl@{BOUNCE_DOMAIN}"], raw, "fbl@fbl.example.net")
    assert code == 250
    await process(parts)
    row = message(engine, mid)
    assert row.status == "delivered"
    assert "complained" in row.flags
    (event,) = events(engine, mid, "arf")
    assert event.kind == "complained"
    assert event.data["matched_by"] == "header"
    entry = suppressed(engine, account.id, "angry@example.test")
    assert entry is not None and entry.reason == suppression.COMPLAINT
    (stored,) = inbound_rows(engine)
    assert (stored.state, stored.kind, stored.account_id) == ("done", "complaint", account.id)


async def test_not_spam_feedback_changes_no_message(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    mid = make_message(engine, account, "fine@example.test", Kind.DELIVERED)
    raw = arf_for(parts.secret, mid, "fine@example.test", feedback_type="not-spam")
    await smtp_send(server.port, [f"abuse@{BOUNCE_DOMAIN}"], raw)
    await process(parts)
    assert events(engine, mid, "arf") == []
    assert suppressed(engine, account.id, "fine@example.test") is None
    assert inbound_rows(engine)[0].state == "done"


async def test_success_dsn_makes_sent_delivered(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    mid = make_message(engine, account, "ok@example.test", Kind.RELAYED)
    raw = dsn_for(
        parts.secret,
        mid,
        "ok@example.test",
        status="2.0.0",
        diagnostic="250 2.0.0 Ok",
        action="delivered",
    )
    await smtp_send(server.port, [verp.address(parts.secret, mid, BOUNCE_DOMAIN)], raw)
    await process(parts)
    assert message(engine, mid).status == "delivered"
    (event,) = events(engine, mid, "dsn")
    assert event.kind == "delivered"
    assert inbound_rows(engine)[0].kind == "success"


async def test_delay_notice_sets_delayed_flag(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    mid = make_message(engine, account, "slow@example.test", Kind.RELAYED)
    raw = dsn_for(
        parts.secret,
        mid,
        "slow@example.test",
        status="4.4.1",
        diagnostic="connect to mx.example.test: Connection timed out",
        action="delayed",
    )
    await smtp_send(server.port, [verp.address(parts.secret, mid, BOUNCE_DOMAIN)], raw)
    await process(parts)
    row = message(engine, mid)
    assert row.status == "sent"
    assert "delayed" in row.flags
    (event,) = events(engine, mid, "dsn")
    assert event.kind == "delayed" and event.hard is False
    assert suppressed(engine, account.id, "slow@example.test") is None


async def test_soft_bounce_of_sent_message_ends_it(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    mid = make_message(engine, account, "full@example.test", Kind.RELAYED)
    raw = dsn_for(
        parts.secret,
        mid,
        "full@example.test",
        status="5.2.2",
        diagnostic="552 5.2.2 Mailbox full",
    )
    await smtp_send(server.port, [verp.address(parts.secret, mid, BOUNCE_DOMAIN)], raw)
    await process(parts)
    row = message(engine, mid)
    assert (row.status, row.reason) == ("bounced", "mailboxfull")
    (event,) = events(engine, mid, "dsn")
    assert event.hard is False
    assert suppressed(engine, account.id, "full@example.test") is None


async def test_bounce_after_delivered_keeps_delivered_and_suppresses(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    mid = make_message(engine, account, "late@example.test", Kind.DELIVERED)
    raw = dsn_for(parts.secret, mid, "late@example.test")
    await smtp_send(server.port, [verp.address(parts.secret, mid, BOUNCE_DOMAIN)], raw)
    await process(parts)
    row = message(engine, mid)
    assert row.status == "delivered"
    assert "bounced_after_delivery" in row.flags
    (event,) = events(engine, mid, "dsn")
    assert event.kind == "bounced" and event.status_after == "delivered"
    assert suppressed(engine, account.id, "late@example.test") is not None


async def test_matching_by_returned_headers_then_by_address(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    """A bounce at postmaster@ quoting Postwarden's own token (X-Postwarden-Id, Message-ID) is
    applied; one that only names an address Postwarden mailed proves nothing: it is kept for
    review ("unverified") beside the latest message to that address, which it leaves as it
    was."""
    by_header = make_message(engine, account, "one@example.test", Kind.RELAYED)
    make_message(engine, account, "two@example.test", Kind.RELAYED)  # older one to "two"
    by_address = make_message(engine, account, "two@example.test", Kind.RELAYED)
    postmaster = f"postmaster@{BOUNCE_DOMAIN}"
    await smtp_send(server.port, [postmaster], dsn_for(parts.secret, by_header, "one@example.test"))
    await smtp_send(
        server.port,
        [postmaster],
        dsn_for(parts.secret, by_address, "two@example.test", token=False),
    )
    # A bounce about an address Postwarden never sent to matches nothing.
    await smtp_send(
        server.port,
        [postmaster],
        dsn_for(parts.secret, 999_999, "nobody@example.test", token=False),
    )
    await process(parts)
    assert events(engine, by_header, "dsn")[0].data["matched_by"] == "header"
    assert events(engine, by_address, "dsn") == []
    assert message(engine, by_address).status == "sent"
    assert message(engine, by_address - 1).status == "sent"
    assert suppressed(engine, account.id, "two@example.test") is None
    assert [(r.state, r.message_id, r.account_id) for r in inbound_rows(engine)] == [
        ("done", by_header, account.id),
        ("unverified", by_address, account.id),
        ("unmatched", None, account.id),
    ]


async def test_autoreply_is_done_without_a_fact(
    server: InboundServer, parts: Parts, engine: Engine, account: accounts.Account
) -> None:
    mid = make_message(engine, account, "away@example.test", Kind.DELIVERED)
    raw = (
        b"From: away@example.test\r\nTo: shop@acme.test\r\nSubject: Out of office\r\n"
        b"Auto-Submitted: auto-replied\r\n\r\nI am out of the office until Monday.\r\n"
    )
    await smtp_send(server.port, [verp.address(parts.secret, mid, BOUNCE_DOMAIN)], raw)
    await process(parts)
    assert events(engine, mid, "dsn") == []
    (row,) = inbound_rows(engine)
    assert (row.state, row.kind) == ("done", "autoreply")


async def test_claim_takes_each_mail_once(parts: Parts, engine: Engine) -> None:
    store = InboundServer(parts, host="127.0.0.1", port=0).store
    ids = [store("p", "", [f"fbl@{BOUNCE_DOMAIN}"], b"x") for _ in range(5)]
    with engine.begin() as conn:
        first = inbound_queue.claim(conn, 3)
    with engine.begin() as conn:
        second = inbound_queue.claim(conn, 10)
    assert first == ids[:3] and second == ids[3:]
    with engine.begin() as conn:
        assert inbound_queue.claim(conn, 10) == []


@pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_concurrent_claims_skip_each_others_rows(parts: Parts, engine: Engine) -> None:
    """SKIP LOCKED is PostgreSQL's (SQLite has a single writer)."""
    store = InboundServer(parts, host="127.0.0.1", port=0).store
    ids = [store("p", "", [f"fbl@{BOUNCE_DOMAIN}"], b"x") for _ in range(4)]
    with engine.connect() as a, engine.connect() as b:
        with a.begin():
            first = inbound_queue.claim(a, 2)
            with b.begin():  # while the first claim is not yet committed
                second = inbound_queue.claim(b, 10)
    assert first == ids[:2] and second == ids[2:]


# endregion

# region end to end


async def wait_for(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_late_bounce_from_simulator_end_to_end(
    settings: Settings, engine: Engine, account: accounts.Account
) -> None:
    parts = Parts(settings.model_copy(update={"inbound_port": 0}), engine, secret_of(settings))
    stop = asyncio.Event()
    async with running_inbound(parts, stop) as inbound:
        async with Simulator(
            late_bounce_delay=0.3, bounce_target=("127.0.0.1", inbound.port)
        ) as sim:
            routed = settings.smtp.model_copy(
                update={"routes": {"example.test": ("127.0.0.1", sim.port)}}
            )
            configured = parts.settings.model_copy(update={"smtp": routed})
            dispatcher = Dispatcher(engine, configured, registry.channels(configured, parts.secret))
            try:
                first = submit(engine, account, "latebounce-x@example.test")
                assert await dispatcher.run_once() == 1
                assert message(engine, first.id).status == "delivered"

                def bounced() -> bool:
                    return "bounced_after_delivery" in message(engine, first.id).flags

                await wait_for(bounced)
            finally:
                await dispatcher.aclose()
            assert sim.bounces and sim.bounces[0].error is None
    row = message(engine, first.id)
    assert row.status == "delivered"
    (event,) = events(engine, first.id, "dsn")
    assert event.kind == "bounced" and event.reason == "userunknown"
    assert event.data["matched_by"] == "verp"
    entry = suppressed(engine, account.id, "latebounce-x@example.test")
    assert entry is not None and entry.message_id == first.id
    assert submit(engine, account, "latebounce-x@example.test").status == "dropped"


# endregion


def test_a_mail_left_processing_by_a_dead_process_is_claimed_again(
    parts: Parts, engine: Engine
) -> None:
    store = InboundServer(parts, host="127.0.0.1", port=0).store
    (inbound_id,) = [store("p", "", [f"fbl@{BOUNCE_DOMAIN}"], b"x")]
    with engine.begin() as conn:
        assert inbound_queue.claim(conn, 10) == [inbound_id]  # ... and then the process dies
    with engine.begin() as conn:
        assert inbound_queue.claim(conn, 10) == [], "a fresh claim is left alone"
        conn.execute(
            update(t.inbound_mails).values(
                claimed_at=clock.now() - inbound_queue.CLAIM_TIMEOUT - timedelta(seconds=1)
            )
        )
        assert inbound_queue.claim(conn, 10) == [inbound_id]


async def test_a_dead_worker_is_replaced_and_nothing_is_lost(
    settings: Settings,
    engine: Engine,
    account: accounts.Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stored mails are applied by a worker process; one that dies is replaced, and a bounce
    received meanwhile (stored, answered 250) is applied by the next one."""
    started: list[worker.Worker] = []

    class Recorded(worker.Worker):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            started.append(self)

    monkeypatch.setattr(worker, "Worker", Recorded)
    monkeypatch.setattr(worker, "RESTART_DELAY", 0.1)
    parts = Parts(settings.model_copy(update={"inbound_port": 0}), engine, secret_of(settings))
    first = make_message(engine, account, "w1@example.test", Kind.RELAYED)
    second = make_message(engine, account, "w2@example.test", Kind.RELAYED)
    stop = asyncio.Event()
    async with running_inbound(parts, stop) as inbound:
        for mid, to in ((first, "w1@example.test"), (second, "w2@example.test")):
            rcpt = verp.address(parts.secret, mid, BOUNCE_DOMAIN)
            code, _ = await smtp_send(inbound.port, [rcpt], dsn_for(parts.secret, mid, to))
            assert code == 250
            await wait_for(lambda mid=mid: message(engine, mid).status == "bounced")
            if mid == first:
                assert len(started) == 1
                started[0].process.kill()
                await asyncio.to_thread(started[0].process.wait)
        assert len(started) == 2
    assert started[1].process.poll() is not None  # stopped with the server
