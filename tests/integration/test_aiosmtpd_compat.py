"""The aiosmtpd adapter (inbound/mail/aiosmtpd_compat.py) against the library it overrides:
each test fails when aiosmtpd changes a private name, a signature or a behaviour the adapter
relies on. Real sessions on loopback, side by side with aiosmtpd's own protocol."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from importlib import metadata
from typing import Any

import pytest
from aiosmtpd import smtp
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from postwarden.inbound.mail import aiosmtpd_compat


class _Keep:
    """A handler that keeps what each DATA gave."""

    def __init__(self) -> None:
        self.mails: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: smtp.Envelope) -> str:
        self.mails.append(
            (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or b"")
        )
        return "250 OK"


async def _serve(
    make: Callable[[], asyncio.Protocol],
) -> tuple[asyncio.Server, int]:
    server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


class _Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> bytes:
        line = await asyncio.wait_for(self.reader.readline(), 10)
        while line[3:4] == b"-":
            line = await asyncio.wait_for(self.reader.readline(), 10)
        return line

    async def say(self, data: bytes) -> bytes:
        self.writer.write(data)
        return await self.reply()


async def _session(port: int) -> _Client:
    client = _Client(*await asyncio.open_connection("127.0.0.1", port))
    assert (await client.reply()).startswith(b"220 ")
    assert (await client.say(b"EHLO client.test\r\n")).startswith(b"250 ")
    return client


@pytest.fixture
async def pair() -> AsyncIterator[tuple[tuple[int, _Keep], tuple[int, _Keep]]]:
    """aiosmtpd's protocol and the adapter's, each on a port of its own."""
    loop = asyncio.get_running_loop()
    theirs, ours = _Keep(), _Keep()
    plain, plain_port = await _serve(
        lambda: smtp.SMTP(theirs, data_size_limit=100_000, enable_SMTPUTF8=True, loop=loop)
    )
    fast, fast_port = await _serve(
        lambda: aiosmtpd_compat.SMTP(
            ours,
            admit=lambda transport: None,
            release=lambda transport: None,
            data_size_limit=100_000,
            enable_SMTPUTF8=True,
            loop=loop,
        )
    )
    yield (plain_port, theirs), (fast_port, ours)
    for server in (plain, fast):
        server.close()
        await server.wait_closed()


def test_aiosmtpd_is_pinned_to_the_range_these_tests_ran_on() -> None:
    """The adapter is checked against one minor version: a newer one must pass these tests
    before the pin in pyproject.toml moves."""
    (pin,) = [r for r in metadata.requires("postwarden") or () if r.startswith("aiosmtpd")]
    assert Requirement(pin).specifier == SpecifierSet(">=1.4.6,<1.5")
    assert metadata.version("aiosmtpd") in Requirement(pin).specifier


def test_the_private_names_the_adapter_uses_are_there() -> None:
    base = smtp.SMTP
    for name in ("check_helo_needed", "check_auth_needed", "_call_handler_hook", "push"):
        assert inspect.iscoroutinefunction(getattr(base, name)), name
    assert list(inspect.signature(base._call_handler_hook).parameters) == [
        "self",
        "command",
        "args",
    ]
    assert list(inspect.signature(base.check_auth_needed).parameters) == [
        "self",
        "caller_method",
    ]
    assert list(inspect.signature(base._getaddr).parameters) == ["self", "arg"]
    assert list(inspect.signature(base._set_post_data_state).parameters) == ["self"]
    assert base.smtp_DATA.__smtp_syntax__ == "DATA"  # type: ignore[attr-defined]
    assert aiosmtpd_compat.SMTP.smtp_DATA.__smtp_syntax__ == "DATA"  # type: ignore[attr-defined]
    assert smtp.MISSING is not None
    assert isinstance(base.local_part_limit, int)
    assert isinstance(base.line_length_limit, int)


async def test_the_protocol_keeps_its_reader_writer_and_transports() -> None:
    """``_reader``/``_writer`` are set for each connection, ``_original_transport`` stays None
    without STARTTLS, and the stream reader's limit is ``line_length_limit``."""
    seen: list[aiosmtpd_compat.SMTP] = []
    loop = asyncio.get_running_loop()

    def make() -> aiosmtpd_compat.SMTP:
        protocol = aiosmtpd_compat.SMTP(
            _Keep(), admit=lambda t: None, release=lambda t: None, loop=loop
        )
        seen.append(protocol)
        return protocol

    server, port = await _serve(make)
    try:
        client = await _session(port)
        (protocol,) = seen
        assert isinstance(protocol._reader, asyncio.StreamReader)
        assert isinstance(protocol._writer, asyncio.StreamWriter)
        assert protocol._original_transport is None
        assert protocol._reader._limit == aiosmtpd_compat.SMTP.line_length_limit  # type: ignore[attr-defined]
        client.writer.close()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "arg",
    [
        "<>",
        "<a@example.test>",
        " <b+tok@bounces.acme.test>",
        "<first.last@sub.example.test> SIZE=100",
        "<x@example.test>  BODY=8BITMIME SMTPUTF8",
        "<o'brien+tag@example.test>",
        "a@example.test",  # not angled: aiosmtpd's own parser
        '<"quoted local"@example.test>',
        "<bad@@example.test>",
        "<>  SIZE=10",
        "",
    ],
)
async def test_getaddr_reads_as_aiosmtpd_does(arg: str) -> None:
    loop = asyncio.get_running_loop()
    plain = smtp.SMTP(_Keep(), loop=loop)
    fast = aiosmtpd_compat.SMTP(_Keep(), admit=lambda t: None, release=lambda t: None, loop=loop)
    assert fast._getaddr(arg) == plain._getaddr(arg)
    plain.local_part_limit = fast.local_part_limit = 3
    assert fast._getaddr(arg) == plain._getaddr(arg)


async def test_data_reads_as_aiosmtpd_does(pair: Any) -> None:
    """The same session to both protocols stores the same mails and gets the same replies,
    but for the adapter's enhanced code on oversized mail (aiosmtpd words it "552 Error:",
    which is what the adapter rewrites)."""
    mails = [
        b"Subject: one\r\n\r\nhello\r\n",
        b"Subject: dots\r\n\r\n..a dot\r\nend with a dot.\r\n..\r\n",
        b"",
        (b"x" * 998 + b"\r\n") * 120,  # over the size limit
        b"Subject: 8bit\r\n\r\n" + "Grüße".encode() + b"\r\n",
    ]
    replies: list[list[bytes]] = []
    for port, _keep in pair:
        client = await _session(port)
        got = []
        for mail in mails:
            assert (await client.say(b"MAIL FROM:<>\r\n")).startswith(b"250")
            assert (await client.say(b"RCPT TO:<a@example.test>\r\n")).startswith(b"250")
            assert (await client.say(b"DATA\r\n")).startswith(b"354")
            got.append(await client.say(mail + b".\r\n"))
        got.append(await client.say(b"MAIL FROM:<> SIZE=500000\r\n"))
        await client.say(b"QUIT\r\n")
        client.writer.close()
        replies.append(got)
    (_, theirs), (_, ours) = pair
    assert ours.mails == theirs.mails
    assert [m for _f, _r, m in ours.mails] == [
        b"Subject: one\r\n\r\nhello\r\n",
        b"Subject: dots\r\n\r\n.a dot\r\nend with a dot.\r\n.\r\n",
        b"",
        b"Subject: 8bit\r\n\r\n" + "Grüße".encode() + b"\r\n",
    ]
    plain, fast = replies
    assert plain[3].startswith(b"552 Error:") and plain[5].startswith(b"552 Error:")
    assert fast[3].startswith(b"552 5.3.4 ") and fast[5].startswith(b"552 5.3.4 ")
    assert [r[:3] for r in fast] == [r[:3] for r in plain]


async def test_long_lines_are_taken_where_aiosmtpd_refuses_them(pair: Any) -> None:
    wide = b"Subject: wide\r\n\r\n" + b"w" * 40_000 + b"\r\n"
    codes = []
    for port, _keep in pair:
        client = await _session(port)
        await client.say(b"MAIL FROM:<>\r\n")
        await client.say(b"RCPT TO:<a@example.test>\r\n")
        await client.say(b"DATA\r\n")
        codes.append((await client.say(wide + b".\r\n"))[:3])
        client.writer.close()
    assert codes == [b"500", b"250"]
    (_, theirs), (_, ours) = pair
    assert theirs.mails == [] and [m for _f, _r, m in ours.mails] == [wide]


async def test_admit_refuses_and_release_follows_each_admitted_connection() -> None:
    loop = asyncio.get_running_loop()
    admitted: list[asyncio.BaseTransport] = []
    released: list[asyncio.BaseTransport] = []

    def admit(transport: asyncio.BaseTransport) -> bytes | None:
        if admitted:
            return b"421 4.7.0 busy\r\n"
        admitted.append(transport)
        return None

    server, port = await _serve(
        lambda: aiosmtpd_compat.SMTP(_Keep(), admit=admit, release=released.append, loop=loop)
    )
    try:
        first = await _session(port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.readline(), 5) == b"421 4.7.0 busy\r\n"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert released == []
        await first.say(b"QUIT\r\n")
        first.writer.close()
        for _ in range(100):
            if released:
                break
            await asyncio.sleep(0.02)
        assert released == admitted
    finally:
        server.close()
        await server.wait_closed()
