"""SMTP channel: through a relay (smarthost) or directly to the recipient domain's MX.

Every command and reply of an attempt goes into :attr:`base.AttemptResult.transcript`, so
aiosmtplib's low-level methods are used (``connect``/``ehlo``/``starttls``/``auth_*``/``mail``/
``rcpt``/``data``/``quit``) instead of ``sendmail``. aiosmtplib exceptions are mapped to outcomes
here and nowhere else:

- 2xx -> ``accepted``; 4xx -> ``temporary``; 5xx -> ``permanent``; anything else -> ``temporary``;
- no reply (timeout, refused or dropped connection, TLS failure) -> ``temporary`` with ``code``
  ``None`` and a plain-language ``text``;
- connection set-up failures (greeting, EHLO, STARTTLS, AUTH) are ``temporary`` for the whole
  batch, whatever the code: the fault is with the path, not with the messages (Postfix does the
  same for a rejected greeting or a failed SASL login).

One connection carries up to ``messages_per_connection`` messages. If it breaks (drop, timeout)
the message in flight is ``temporary`` and the messages not yet attempted are retried once on a
fresh connection. A 421 reply means the server is closing: the rest are ``temporary``.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from postwarden.outbound.channels import base

_LONE_LF = re.compile(rb"(?<!\r)\n")
_LONE_CR = re.compile(rb"\r(?!\n)")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")

__all__ = ["SMTPChannel", "SMTPConfig"]

T = TypeVar("T")

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_NEGATIVE_TTL = 60.0  # how long NXDOMAIN / null MX answers are cached at most


@dataclass(frozen=True)
class SMTPConfig:
    """How to reach recipients. Every field has a working default for direct-to-MX delivery."""

    relay: str | None = None  # "smtp://user:pass@host:port" or "smtps://..."; None = direct to MX
    # Transport map: recipient domain -> (host, port) used as its MX; a key starting with "."
    # matches subdomains (like Postfix transport_maps). Routes bypass DNS.
    routes: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    helo_name: str = field(default_factory=socket.getfqdn)
    dns_nameserver: tuple[str, int] | None = None  # resolve MX through this server only
    connect_timeout: float = 10  # TCP connect + greeting
    command_timeout: float = 30  # EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET, QUIT
    data_timeout: float = 120  # each reply of DATA (the 354 and the final one)
    per_domain_concurrency: int = 4
    messages_per_connection: int = 100
    tls_verify: bool = False  # verify MX certificates; False = opportunistic STARTTLS
    relay_tls_verify: bool = True  # verify the relay's certificate
    tls_ca_file: str | None = None  # extra CA bundle for verification (private relay CA)
    mx_port: int = 25  # port used for hosts found in DNS (tests and demos change it)
    dns_timeout: float = 5
    mx_cache_ttl: float = 300  # upper bound for caching an MX answer (the record TTL wins)
    max_mx_attempts: int = 5  # addresses tried per connection before giving up


@dataclass(frozen=True, slots=True)
class _Relay:
    host: str
    port: int
    implicit_tls: bool
    username: str | None
    password: str


@dataclass(frozen=True, slots=True)
class _Target:
    host: str  # name used for TLS (MX host name, relay host name, route host)
    address: str  # what we connect to
    port: int

    @property
    def remote(self) -> str:
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class _Undeliverable:
    """A decision reached without talking SMTP (DNS said no, or no host answered)."""

    outcome: base.Outcome
    enhanced: str | None
    text: str
    code: int | None = None
    remote: str | None = None
    transcript: str = ""


class _Failure(Exception):
    """One exchange did not end in a usable 2xx/3xx reply."""

    def __init__(self, code: int | None, text: str, *, alive: bool) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.alive = alive  # the connection can still be used


def parse_relay(url: str) -> _Relay:
    """Parse ``smtp://user:pass@host:port`` (default port 587) or ``smtps://`` (465)."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError(f"relay must look like smtp://user:pass@host:port, not {url!r}")
    implicit = parts.scheme == "smtps"
    return _Relay(
        host=parts.hostname,
        port=parts.port or (465 if implicit else 587),
        implicit_tls=implicit,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password or ""),
    )


def _outcome(code: int | None) -> base.Outcome:
    if code is not None and 200 <= code < 300:
        return "accepted"
    if code is not None and 500 <= code < 600:
        return "permanent"
    return "temporary"


def _enhanced(code: int | None, text: str) -> str | None:
    match = _ENHANCED.match(text)
    if match is None or (code is not None and str(code)[0] != match.group(1)):
        return None
    return match.group(0)


_clock: list[Any] = [-1, ""]  # [the millisecond, its text]: one formatting per millisecond


def _now() -> str:
    """UTC time of day with milliseconds, for transcript lines (``HH:MM:SS.mmm``)."""
    ms = int(time.time() * 1000)
    last = _clock
    if ms == last[0]:
        return last[1]
    seconds, milli = divmod(ms, 1000)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    text = f"{hours % 24:02d}:{minute:02d}:{sec:02d}.{milli:03d}"
    _clock[:] = (ms, text)
    return text


def _secs(value: float) -> str:
    return f"{value:g} s"


def _data_section(data: bytes) -> bytes:
    """A message as the DATA command sends it (RFC 5321 4.5.2): CRLF line ends, each line
    that starts with a dot given a second one, then the line with the single dot."""
    crlf = data.count(b"\r\n")
    if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
        data = _LONE_LF.sub(b"\r\n", _LONE_CR.sub(b"\r\n", data))
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\n.", b"\n..") + b".\r\n"


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def _pieces(
    batch: Sequence[base.Outgoing], size: int, concurrency: int
) -> list[Sequence[base.Outgoing]]:
    """Split a batch into connections' pieces of at most ``size`` messages, of even sizes and
    in a whole number of rounds of ``concurrency`` connections: 500 messages, 100 a connection
    and 4 at once make 8 pieces of 62 or 63 (two full rounds), not 5 of 100 whose last one
    would run alone while the other connections are done."""
    count = -(-len(batch) // max(size, 1))
    if count > concurrency > 0:
        count = -(-count // concurrency) * concurrency
    count = min(max(count, 1), len(batch))
    step, extra = divmod(len(batch), count)
    pieces: list[Sequence[base.Outgoing]] = []
    start = 0
    for i in range(count):
        end = start + step + (1 if i < extra else 0)
        pieces.append(batch[start:end])
        start = end
    return pieces


class _Replies(asyncio.Protocol):
    """Reads SMTP replies off a transport taken over from aiosmtplib after the session is set
    up, so that commands can be pipelined (RFC 2920): aiosmtplib waits for one reply per
    command and drops replies that arrive early."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray()
        self.lines: list[str] = []
        self.replies: collections.deque[tuple[int, str]] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.lost: BaseException | None = None
        transport.set_protocol(self)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", start)) != -1:
            line = bytes(buffer[start : end + 1])
            start = end + 1
            text = line[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape")
            self.lines.append(text)
            if line[3:4] != b"-":
                try:
                    code = int(line[:3])
                except ValueError:
                    code = -1
                self.replies.append((code, "\n".join(self.lines)))
                self.lines = []
        if start:
            del buffer[:start]
        if len(buffer) > 65536:
            self.connection_lost(ConnectionError("reply line too long"))
        self._wake()

    def eof_received(self) -> bool:
        self.connection_lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = exc or ConnectionResetError("the server closed the connection")
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def write(self, data: bytes) -> None:
        if self.lost is not None or self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.transport.write(data)

    async def read(self, timeout: float) -> tuple[int, str]:
        """The next reply within ``timeout`` seconds; raises TimeoutError, or ConnectionError
        when the connection is gone.

        A reply already received is returned without arming a timer, and a wait arms one
        plain timer handle rather than an ``asyncio.timeout`` scope: this runs for every
        reply of every message sent."""
        deadline = None
        while not self.replies:
            if self.lost is not None:
                raise ConnectionResetError(str(self.lost))
            loop = self.loop
            if deadline is None:
                deadline = loop.time() + timeout
            waiter = self.waiter = loop.create_future()
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self.waiter = None
        code, text = self.replies.popleft()
        if code < 0:
            raise ConnectionResetError(f"malformed reply: {text[:80]}")
        return code, text


class _Session:
    """One SMTP connection and its transcript."""

    def __init__(self, channel: SMTPChannel, target: _Target, *, tls: bool) -> None:
        self.channel = channel
        self.config = channel.config
        self.target = target
        self.remote = target.remote
        self.try_tls = tls
        self.tls_failed = False
        self.closed_by_421: _Failure | None = None
        self.lines: list[str] = []
        relay = channel.relay
        self.relay = relay
        implicit = relay is not None and relay.implicit_tls
        self.client = aiosmtplib.SMTP(
            hostname=target.address,
            port=target.port,
            local_hostname=self.config.helo_name,
            timeout=self.config.command_timeout,
            use_tls=implicit,
            start_tls=False,
            tls_context=channel.tls_context(relay=relay is not None) if implicit else None,
        )
        self.prefix = ""
        self.pipe: _Replies | None = None
        # The next transaction's MAIL, RCPT and DATA, written after the previous message's
        # body in the same write (RFC 2920 allows the end of data to start a group): the
        # message they are for, and its transcript lines so far.
        self.ahead_for: base.Outgoing | None = None
        self.ahead_lines: list[str] = []

    def pipeline(self) -> None:
        """Take the transport over for pipelined transactions when the server offers
        PIPELINING (after greeting, STARTTLS, EHLO and AUTH went through aiosmtplib)."""
        client = self.client
        transport = client.transport
        if client.supports_extension("pipelining") and hasattr(transport, "set_protocol"):
            self.pipe = _Replies(transport)  # type: ignore[arg-type]

    def log(self, lines: list[str], text: str) -> None:
        lines.append(f"{_now()} {text}\n")

    def log_reply(self, lines: list[str], code: int, message: str) -> None:
        ts = _now()
        if "\n" not in message:
            lines.append(f"{ts} S: {code} {message}\n")
            return
        parts = message.split("\n")
        last = len(parts) - 1
        for i, part in enumerate(parts):
            lines.append(f"{ts} S: {code}{'-' if i < last else ' '}{part}\n")

    async def exchange(
        self,
        lines: list[str],
        label: str | None,
        aw: Awaitable[T],
        *,
        what: str,
        timeout: float,
    ) -> T:
        """Await one command's reply, logging both sides; failures become :class:`_Failure`."""
        if label is not None:
            self.log(lines, f"C: {label}")
        client = self.client
        try:
            resp = await aw
        except aiosmtplib.SMTPResponseException as exc:
            self.log_reply(lines, exc.code, exc.message)
            alive = client.is_connected
            if exc.code == 421:
                alive = False
            raise _Failure(exc.code, exc.message, alive=alive) from None
        except TimeoutError:
            text = f"timed out after {_secs(timeout)} waiting for the reply to {what}"
            self.log(lines, f"error: {text}")
            raise _Failure(None, text, alive=False) from None
        except ssl.SSLError as exc:
            text = f"TLS with {self.remote} failed during {what}: {exc}"
            self.log(lines, f"error: {text}")
            raise _Failure(None, text, alive=False) from None
        except (ConnectionError, OSError) as exc:
            text = f"connection to {self.remote} lost during {what}"
            self.log(lines, f"error: {text} ({exc})")
            raise _Failure(None, text, alive=False) from None
        except aiosmtplib.SMTPException as exc:
            text = f"{what} failed: {exc}"
            self.log(lines, f"error: {text}")
            raise _Failure(None, text, alive=client.is_connected) from None
        except ValueError as exc:  # aiosmtplib refuses unsafe or unencodable arguments
            text = f"cannot send {what}: {exc}"
            self.log(lines, f"error: {text}")
            raise _Failure(None, text, alive=client.is_connected) from None
        if isinstance(resp, aiosmtplib.SMTPResponse):
            self.log_reply(lines, resp.code, resp.message)
        return resp

    async def open(self) -> None:
        """Connect, greet, STARTTLS, EHLO again, AUTH. Raises :class:`_Failure`."""
        cfg = self.config
        client = self.client
        lines = self.lines
        self.log(lines, f"connect {self.remote}")
        try:
            greeting = await client.connect(timeout=cfg.connect_timeout)
        except aiosmtplib.SMTPConnectResponseError as exc:
            self.log_reply(lines, exc.code, exc.message)
            raise _Failure(exc.code, exc.message, alive=False) from None
        except aiosmtplib.SMTPConnectTimeoutError as exc:
            if "ready message" in str(exc):
                text = f"timed out after {_secs(cfg.connect_timeout)} waiting for the greeting"
                text += f" from {self.remote}"
            else:
                text = f"timed out after {_secs(cfg.connect_timeout)} connecting to {self.remote}"
            self.log(lines, f"error: {text}")
            raise _Failure(None, text, alive=False) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            cause = exc.__cause__
            if isinstance(cause, ConnectionRefusedError):
                text = f"connection refused by {self.remote}"
            elif isinstance(cause, aiosmtplib.SMTPServerDisconnected):
                text = f"{self.remote} closed the connection before its greeting"
            else:
                text = f"cannot connect to {self.remote}: {cause or exc}"
            self.log(lines, f"error: {text}")
            raise _Failure(None, text, alive=False) from None
        self.log_reply(lines, greeting.code, greeting.message)
        await self.hello()
        if self.try_tls and not client.use_tls and client.supports_extension("starttls"):
            is_relay = self.relay is not None
            try:
                await self.exchange(
                    lines,
                    "STARTTLS",
                    client.starttls(
                        server_hostname=self.target.host,
                        tls_context=self.channel.tls_context(relay=is_relay),
                        timeout=cfg.command_timeout,
                    ),
                    what="STARTTLS",
                    timeout=cfg.command_timeout,
                )
            except _Failure:
                self.tls_failed = True
                raise
            cipher = client.get_transport_info("cipher")
            self.log(lines, f"TLS {cipher[0] if cipher else 'established'}")
            await self.hello()
        relay = self.relay
        if relay is not None and relay.username is not None:
            methods = client.server_auth_methods
            if not client.supports_extension("auth"):
                text = f"the relay {self.remote} does not offer AUTH"
                self.log(lines, f"error: {text}")
                raise _Failure(None, text, alive=False)
            if "plain" in methods or "login" not in methods:
                label = "AUTH PLAIN ****"
                aw = client.auth_plain(relay.username, relay.password)
            else:
                label = "AUTH LOGIN ****"
                aw = client.auth_login(relay.username, relay.password)
            try:
                await self.exchange(lines, label, aw, what="AUTH", timeout=cfg.command_timeout)
            except _Failure as exc:
                text = f"authentication with the relay {self.remote} failed: {exc.text}"
                raise _Failure(exc.code, text, alive=False) from None
        self.prefix = "".join(lines)
        self.lines = []

    async def hello(self) -> None:
        cfg = self.config
        client = self.client
        try:
            await self.exchange(
                self.lines,
                f"EHLO {cfg.helo_name}",
                client.ehlo(timeout=cfg.command_timeout),
                what="EHLO",
                timeout=cfg.command_timeout,
            )
        except _Failure as exc:
            if not exc.alive:
                raise
            await self.exchange(
                self.lines,
                f"HELO {cfg.helo_name}",
                client.helo(timeout=cfg.command_timeout),
                what="HELO",
                timeout=cfg.command_timeout,
            )

    async def send(
        self, out: base.Outgoing, next_out: base.Outgoing | None = None
    ) -> tuple[base.Outcome, int | None, str | None, str, list[str], bool]:
        """One transaction. Returns (outcome, code, enhanced, text, lines, connection alive).

        On a pipelining connection, ``next_out`` (the message to send after this one) has its
        commands written together with this message's body."""
        if self.ahead_for is not None:
            if self.ahead_for is out:
                lines = self.ahead_lines
                self.ahead_for, self.ahead_lines = None, []
                return await self._send_pipelined(out, lines, next_out, sent=True)
            raise RuntimeError("a transaction was started ahead for another message")
        cfg = self.config
        client = self.client
        lines: list[str] = []
        ct = cfg.command_timeout
        options: list[str] = []
        encoding = "ascii"
        if "size" in client.esmtp_extensions:
            options.append(f"SIZE={len(out.data)}")
        if not out.data.isascii() and "8bitmime" in client.esmtp_extensions:
            options.append("BODY=8BITMIME")
        if not (out.mail_from.isascii() and out.rcpt.isascii()):
            if "smtputf8" not in client.esmtp_extensions:
                text = f"the address is not ASCII and {self.remote} does not offer SMTPUTF8"
                self.log(lines, f"error: {text}")
                return "permanent", None, "5.6.7", text, lines, True
            options.append("SMTPUTF8")
            encoding = "utf-8"
        mail = f"MAIL FROM:<{out.mail_from}>"
        if options:
            mail += " " + " ".join(options)
        if self.pipe is not None:
            if _UNSAFE.search(out.mail_from) or _UNSAFE.search(out.rcpt):
                text = "cannot send MAIL FROM: Command arg contains a prohibited control character"
                self.log(lines, f"error: {text}")
                return "temporary", None, None, text, lines, True
            rcpt = f"RCPT TO:<{out.rcpt}>"
            ts = _now()
            lines.append(f"{ts} C: {mail}\n{ts} C: {rcpt}\n{ts} C: DATA\n")
            try:
                self._write(lines, f"{mail}\r\n{rcpt}\r\nDATA\r\n".encode(encoding), "MAIL FROM")
            except _Failure as exc:
                return await self._failed(exc, lines, rset=False)
            return await self._send_pipelined(out, lines, next_out, sent=True)
        try:
            await self.exchange(
                lines,
                mail,
                client.mail(out.mail_from, options=options, encoding=encoding, timeout=ct),
                what="MAIL FROM",
                timeout=ct,
            )
            await self.exchange(
                lines,
                f"RCPT TO:<{out.rcpt}>",
                client.rcpt(out.rcpt, encoding=encoding, timeout=ct),
                what="RCPT TO",
                timeout=ct,
            )
            self.log(lines, "C: DATA")
            self.log(lines, f"C: <message {len(out.data)} bytes>")
            resp = await self.exchange(
                lines,
                None,
                client.data(out.data, timeout=cfg.data_timeout),
                what="DATA",
                timeout=cfg.data_timeout,
            )
        except _Failure as exc:
            outcome = _outcome(exc.code)
            if outcome == "accepted":  # a 2xx where another code was expected
                outcome = "temporary"
            alive = exc.alive
            if exc.code == 421:
                self.closed_by_421 = exc
            if alive:
                try:
                    await self.exchange(
                        lines, "RSET", client.rset(timeout=ct), what="RSET", timeout=ct
                    )
                except _Failure:
                    alive = False
            enhanced = _enhanced(exc.code, exc.text)
            return outcome, exc.code, enhanced, _first_line(exc.text), lines, alive
        text = resp.message
        return (
            _outcome(resp.code),
            resp.code,
            _enhanced(resp.code, text),
            _first_line(text),
            lines,
            True,
        )

    async def _read(self, lines: list[str], what: str, timeout: float) -> tuple[int, str]:
        """One pipelined reply, logged; a lost connection or a timeout is a :class:`_Failure`."""
        pipe = self.pipe
        assert pipe is not None
        try:
            code, text = await pipe.read(timeout)
        except TimeoutError:
            text = f"timed out after {_secs(timeout)} waiting for the reply to {what}"
            self.log(lines, f"error: {text}")
            raise _Failure(None, text, alive=False) from None
        except ConnectionError as exc:
            text = f"connection to {self.remote} lost during {what}"
            self.log(lines, f"error: {text} ({exc})")
            raise _Failure(None, text, alive=False) from None
        self.log_reply(lines, code, text)
        return code, text

    def _write(self, lines: list[str], data: bytes, what: str) -> None:
        pipe = self.pipe
        assert pipe is not None
        try:
            pipe.write(data)
        except ConnectionError as exc:
            text = f"connection to {self.remote} lost during {what}"
            self.log(lines, f"error: {text} ({exc})")
            raise _Failure(None, text, alive=False) from None

    def _ahead(self, out: base.Outgoing) -> tuple[bytes, str] | None:
        """The commands of ``out``'s transaction and their transcript text, when they can be
        written ahead (plain ASCII, nothing send() would refuse before writing)."""
        client = self.client
        if not (out.mail_from.isascii() and out.rcpt.isascii()):
            return None
        if _UNSAFE.search(out.mail_from) or _UNSAFE.search(out.rcpt):
            return None
        mail = f"MAIL FROM:<{out.mail_from}>"
        options = []
        if "size" in client.esmtp_extensions:
            options.append(f"SIZE={len(out.data)}")
        if not out.data.isascii() and "8bitmime" in client.esmtp_extensions:
            options.append("BODY=8BITMIME")
        if options:
            mail += " " + " ".join(options)
        rcpt = f"RCPT TO:<{out.rcpt}>"
        ts = _now()
        return (
            f"{mail}\r\n{rcpt}\r\nDATA\r\n".encode("ascii"),
            f"{ts} C: {mail}\n{ts} C: {rcpt}\n{ts} C: DATA\n",
        )

    async def _send_pipelined(
        self,
        out: base.Outgoing,
        lines: list[str],
        next_out: base.Outgoing | None,
        *,
        sent: bool,
    ) -> tuple[base.Outcome, int | None, str | None, str, list[str], bool]:
        """MAIL, RCPT and DATA already written in one write; the body goes in a second, with
        the next transaction's commands after it: one round trip per message."""
        assert sent
        cfg = self.config
        ct = cfg.command_timeout
        failure: _Failure | None = None
        ahead_sent = False
        try:
            replies: list[tuple[int, str]] = []
            for what, timeout in (("MAIL FROM", ct), ("RCPT TO", ct), ("DATA", cfg.data_timeout)):
                replies.append(await self._read(lines, what, timeout))
                if replies[-1][0] == 421:  # the server is closing: no further replies come
                    break
            for (code, text), expected in zip(replies, (2, 2, 3), strict=False):
                if code // 100 != expected:
                    failure = _Failure(code, text, alive=code != 421)
                    break
            if failure is None:
                data = _data_section(out.data)
                self.log(lines, f"C: <message {len(out.data)} bytes>")
                ahead = self._ahead(next_out) if next_out is not None else None
                if ahead is not None:
                    data += ahead[0]
                self._write(lines, data, "DATA")
                if ahead is not None:
                    assert next_out is not None
                    self.ahead_for, self.ahead_lines = next_out, [ahead[1]]
                    ahead_sent = True
                code, text = await self._read(lines, "DATA", cfg.data_timeout)
                if code // 100 != 2:
                    failure = _Failure(code, text, alive=code != 421)
                else:
                    return "accepted", code, _enhanced(code, text), _first_line(text), lines, True
            elif len(replies) == 3 and replies[2][0] == 354:  # DATA accepted after all: end it
                self._write(lines, b".\r\n", "DATA")
                await self._read(lines, "DATA", cfg.data_timeout)
        except _Failure as exc:
            failure = exc
        assert failure is not None
        # After the end of data the transaction is over whatever the reply: no RSET, which
        # would also land in the middle of the transaction written ahead.
        return await self._failed(failure, lines, rset=not ahead_sent)

    async def _failed(
        self, failure: _Failure, lines: list[str], *, rset: bool
    ) -> tuple[base.Outcome, int | None, str | None, str, list[str], bool]:
        outcome = _outcome(failure.code)
        if outcome == "accepted":
            outcome = "temporary"
        alive = failure.alive
        if failure.code == 421:
            self.closed_by_421 = failure
        if alive and rset:
            self.log(lines, "C: RSET")
            try:
                self._write(lines, b"RSET\r\n", "RSET")
                code, _text = await self._read(lines, "RSET", self.config.command_timeout)
                alive = code // 100 == 2
            except _Failure:
                alive = False
        if not alive:
            self.ahead_for, self.ahead_lines = None, []
        enhanced = _enhanced(failure.code, failure.text)
        return outcome, failure.code, enhanced, _first_line(failure.text), lines, alive

    async def quit(self, lines: list[str]) -> None:
        timeout = min(self.config.command_timeout, 5.0)
        if self.pipe is not None:
            self.log(lines, "C: QUIT")
            try:
                self._write(lines, b"QUIT\r\n", "QUIT")
                await self._read(lines, "QUIT", timeout)
            except _Failure:
                pass
            return
        try:
            await self.exchange(
                lines, "QUIT", self.client.quit(timeout=timeout), what="QUIT", timeout=timeout
            )
        except _Failure:
            pass

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.transport.close()
        self.client.close()


class SMTPChannel:
    """Send built messages over SMTP (see the module docstring for the outcome rules)."""

    name = "smtp"

    def __init__(self, config: SMTPConfig | None = None) -> None:
        self.config = config = config or SMTPConfig()
        if config.per_domain_concurrency < 1 or config.messages_per_connection < 1:
            raise ValueError("per_domain_concurrency and messages_per_connection must be >= 1")
        self.relay = parse_relay(config.relay) if config.relay else None
        self._routes = {k.lower().rstrip("."): v for k, v in config.routes.items()}
        self._tls: dict[bool, ssl.SSLContext] = {}
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._mx_cache: dict[str, tuple[float, list[_Target] | _Undeliverable]] = {}
        self._mx_inflight: dict[str, asyncio.Task[tuple[list[_Target] | _Undeliverable, float]]]
        self._mx_inflight = {}
        self._slots: dict[str, list[Any]] = {}  # domain -> [Semaphore, users]

    # region public API

    async def send_many(
        self, domain: str, batch: Sequence[base.Outgoing]
    ) -> list[base.AttemptResult]:
        """Send ``batch`` (all for recipient ``domain``); one result per item, same order."""
        if not batch:
            return []
        domain = domain.lower().rstrip(".")
        via: base.Via = "relay" if self.relay is not None else "mx"
        if self.relay is not None:
            relay = self.relay
            plan: list[_Target] | _Undeliverable = [_Target(relay.host, relay.host, relay.port)]
        else:
            plan = await self._plan(domain)
        if isinstance(plan, _Undeliverable):
            now = datetime.now(UTC)
            return [self._decided(out, plan, via, now, 0) for out in batch]
        pieces = _pieces(
            batch, self.config.messages_per_connection, self.config.per_domain_concurrency
        )
        slot = self._slots.get(domain)
        if slot is None:
            slot = self._slots[domain] = [asyncio.Semaphore(self.config.per_domain_concurrency), 0]
        slot[1] += 1
        sem: asyncio.Semaphore = slot[0]

        async def run(piece: Sequence[base.Outgoing]) -> list[base.AttemptResult]:
            async with sem:
                return await self._deliver(piece, plan, via)

        try:
            if len(pieces) == 1:
                return await run(pieces[0])
            done = await asyncio.gather(*(run(p) for p in pieces))
            return [r for part in done for r in part]
        finally:
            slot[1] -= 1
            if slot[1] == 0:
                del self._slots[domain]

    async def aclose(self) -> None:
        """Forget cached DNS answers; connections never outlive ``send_many``."""
        for task in self._mx_inflight.values():
            task.cancel()
        self._mx_inflight.clear()
        self._mx_cache.clear()

    # endregion

    def tls_context(self, *, relay: bool) -> ssl.SSLContext:
        ctx = self._tls.get(relay)
        if ctx is None:
            verify = self.config.relay_tls_verify if relay else self.config.tls_verify
            ctx = ssl.create_default_context(cafile=self.config.tls_ca_file)
            if not verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._tls[relay] = ctx
        return ctx

    def _decided(
        self,
        out: base.Outgoing,
        decision: _Undeliverable,
        via: base.Via,
        started: datetime,
        duration_ms: int,
    ) -> base.AttemptResult:
        return base.AttemptResult(
            message_id=out.message_id,
            outcome=decision.outcome,
            code=decision.code,
            enhanced=decision.enhanced,
            text=decision.text,
            remote=decision.remote,
            via=via,
            transcript=decision.transcript,
            started_at=started,
            duration_ms=duration_ms,
        )

    async def _connect(self, targets: list[_Target]) -> _Session | _Undeliverable:
        """Open a session with the first target that works, in order."""
        transcript: list[str] = []
        failure: tuple[_Failure, str] | None = None
        is_relay = self.relay is not None
        for target in targets[: self.config.max_mx_attempts]:
            for tls in (True, False):
                session = _Session(self, target, tls=tls)
                try:
                    await session.open()
                except _Failure as exc:
                    session.close()
                    transcript.extend(session.lines)
                    failure = (exc, target.remote)
                    # Opportunistic TLS failed: like Postfix, try the same host in plain text.
                    if session.tls_failed and not is_relay and not self.config.tls_verify:
                        continue
                    break
                session.prefix = "".join(transcript) + session.prefix
                session.pipeline()
                return session
        assert failure is not None
        last, last_remote = failure
        return _Undeliverable(
            outcome="temporary",
            enhanced=_enhanced(last.code, last.text) or "4.4.1",
            text=_first_line(last.text),
            code=last.code,
            remote=last_remote,
            transcript="".join(transcript),
        )

    async def _deliver(
        self, piece: Sequence[base.Outgoing], targets: list[_Target], via: base.Via
    ) -> list[base.AttemptResult]:
        """Send one piece over one connection (plus one fresh connection if it breaks)."""
        results: list[base.AttemptResult | None] = [None] * len(piece)
        pending = list(range(len(piece)))
        fresh_connection_used = False
        while pending:
            t0 = time.monotonic()
            started = datetime.now(UTC)
            session = await self._connect(targets)
            if isinstance(session, _Undeliverable):
                ms = int((time.monotonic() - t0) * 1000)
                for i in pending:
                    results[i] = self._decided(piece[i], session, via, started, ms)
                break
            try:
                rest, stop = await self._run_session(session, piece, pending, results, via, t0)
            finally:
                session.close()
            if not rest:
                break
            if session.closed_by_421 is None and not fresh_connection_used:
                fresh_connection_used = True
                pending = rest
                continue
            now = datetime.now(UTC)
            decision = _Undeliverable(
                outcome="temporary",
                enhanced=_enhanced(stop.code, stop.text) if stop else None,
                text=f"not attempted: {stop.text if stop else 'connection lost'}",
                code=stop.code if stop and stop.code == 421 else None,
                remote=session.remote,
                transcript=session.prefix,
            )
            for i in rest:
                results[i] = self._decided(piece[i], decision, via, now, 0)
            break
        return [r for r in results if r is not None]

    async def _run_session(
        self,
        session: _Session,
        piece: Sequence[base.Outgoing],
        pending: list[int],
        results: list[base.AttemptResult | None],
        via: base.Via,
        t0: float,
    ) -> tuple[list[int], _Failure | None]:
        """Run transactions until done or the connection breaks; returns what is left."""
        prefix = session.prefix
        remote = session.remote
        last_index: int | None = None
        last_lines: list[str] = []
        last_fields: tuple[Any, ...] = ()
        stop: _Failure | None = None
        rest: list[int] = []
        last = len(pending) - 1
        for n, i in enumerate(pending):
            out = piece[i]
            started = datetime.now(UTC)
            if n:
                t0 = time.monotonic()
            next_out = piece[pending[n + 1]] if n < last else None
            outcome, code, enhanced, text, lines, alive = await session.send(out, next_out)
            ms = int((time.monotonic() - t0) * 1000)
            if last_index is not None:
                results[last_index] = self._result(prefix, last_lines, last_fields)
            last_index, last_lines = i, lines
            last_fields = (out.message_id, outcome, code, enhanced, text, remote, via, started, ms)
            if not alive:
                stop = session.closed_by_421 or _Failure(code, text, alive=False)
                rest = pending[n + 1 :]
                break
        else:
            await session.quit(last_lines)
        if last_index is not None:
            results[last_index] = self._result(prefix, last_lines, last_fields)
        return rest, stop

    @staticmethod
    def _result(prefix: str, lines: list[str], fields: tuple[Any, ...]) -> base.AttemptResult:
        message_id, outcome, code, enhanced, text, remote, via, started, ms = fields
        return base.AttemptResult(
            message_id=message_id,
            outcome=outcome,
            code=code,
            enhanced=enhanced,
            text=text,
            remote=remote,
            via=via,
            transcript=prefix + "".join(lines),
            started_at=started,
            duration_ms=ms,
        )

    # region DNS

    def _route(self, domain: str) -> tuple[str, int] | None:
        routes = self._routes
        if not routes:
            return None
        hit = routes.get(domain)
        if hit is not None:
            return hit
        labels = domain.split(".")
        for i in range(1, len(labels)):
            hit = routes.get("." + ".".join(labels[i:]))
            if hit is not None:
                return hit
        return None

    async def _plan(self, domain: str) -> list[_Target] | _Undeliverable:
        route = self._route(domain)
        if route is not None:
            host, port = route
            return [_Target(host, host, port)]
        cached = self._mx_cache.get(domain)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        task = self._mx_inflight.get(domain)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._resolve(domain))
            self._mx_inflight[domain] = task
            task.add_done_callback(lambda _t: self._mx_inflight.pop(domain, None))
        plan, ttl = await asyncio.shield(task)
        if ttl > 0:
            self._mx_cache[domain] = (time.monotonic() + ttl, plan)
        return plan

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            ns = self.config.dns_nameserver
            if ns is not None:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [dns.nameserver.Do53Nameserver(ns[0], ns[1])]
            else:
                resolver = dns.asyncresolver.Resolver()
            resolver.lifetime = self.config.dns_timeout
            resolver.timeout = min(2.0, self.config.dns_timeout)
            self._resolver = resolver
        return self._resolver

    async def _resolve(self, domain: str) -> tuple[list[_Target] | _Undeliverable, float]:
        """MX lookup -> ordered targets, or a decision. Returns (plan, seconds to cache)."""
        resolver = self._get_resolver()
        transcript = f"{_now()} dns: MX {domain}"
        try:
            answer = await resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            return _Undeliverable(
                "permanent",
                "5.1.2",
                "the recipient domain does not exist",
                transcript=transcript + " -> NXDOMAIN\n",
            ), min(_NEGATIVE_TTL, self.config.mx_cache_ttl)
        except dns.resolver.NoAnswer:
            return await self._implicit_mx(domain, transcript + " -> no MX records\n")
        except dns.exception.DNSException as exc:
            return self._dns_trouble(domain, exc, transcript), 0.0
        records = sorted(answer, key=lambda r: r.preference)
        if len(records) == 1 and records[0].exchange == dns.name.root:
            return _Undeliverable(
                "permanent",
                "5.1.10",
                "the recipient domain does not accept mail (null MX)",
                transcript=transcript + " -> 0 . (null MX)\n",
            ), min(_NEGATIVE_TTL, self.config.mx_cache_ttl)
        # RFC 5321 5.1: hosts of equal preference are tried in random order.
        groups: dict[int, list[str]] = {}
        for rec in records:
            if rec.exchange != dns.name.root:
                groups.setdefault(rec.preference, []).append(rec.exchange.to_text(True))
        hosts: list[str] = []
        for pref in sorted(groups):
            group = groups[pref]
            random.shuffle(group)
            hosts.extend(group)
        ttl = min(float(answer.rrset.ttl if answer.rrset else 0), self.config.mx_cache_ttl)
        lookups = await asyncio.gather(*(self._addresses(h) for h in hosts))
        targets: list[_Target] = []
        trouble: Exception | None = None
        for host, (addresses, error) in zip(hosts, lookups, strict=True):
            targets.extend(_Target(host, a, self.config.mx_port) for a in addresses)
            trouble = trouble or error
        if not targets:
            if trouble is not None:
                return self._dns_trouble(domain, trouble, transcript), 0.0
            return _Undeliverable(
                "temporary",
                "4.4.4",
                f"no address records for the MX hosts of {domain}: {', '.join(hosts)}",
                transcript=transcript + f" -> {', '.join(hosts)} (no addresses)\n",
            ), 0.0
        return targets, ttl

    async def _implicit_mx(
        self, domain: str, transcript: str
    ) -> tuple[list[_Target] | _Undeliverable, float]:
        """RFC 5321 5.1: no MX records -> the domain's own address records."""
        addresses, error = await self._addresses(domain)
        if addresses:
            return [_Target(domain, a, self.config.mx_port) for a in addresses], min(
                _NEGATIVE_TTL, self.config.mx_cache_ttl
            )
        if error is not None:
            return self._dns_trouble(domain, error, transcript), 0.0
        return _Undeliverable(
            "permanent",
            "5.1.2",
            "the recipient domain has no MX or address records",
            transcript=transcript,
        ), min(_NEGATIVE_TTL, self.config.mx_cache_ttl)

    def _dns_trouble(self, domain: str, exc: Exception, transcript: str) -> _Undeliverable:
        if isinstance(exc, dns.exception.Timeout):
            text = f"DNS lookup for {domain} timed out"
        else:
            text = f"DNS lookup for {domain} failed (SERVFAIL or no usable nameserver)"
        return _Undeliverable("temporary", "4.4.3", text, transcript=f"{transcript} -> {exc}\n")

    async def _addresses(self, host: str) -> tuple[list[str], Exception | None]:
        """A then AAAA records of ``host`` (IPv4 first: many hosts lack IPv6 routes)."""
        try:
            ipaddress.ip_address(host)
            return [host], None
        except ValueError:
            pass
        resolver = self._get_resolver()
        out: list[str] = []
        error: Exception | None = None
        answers = await asyncio.gather(
            resolver.resolve(host, "A"), resolver.resolve(host, "AAAA"), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, dns.resolver.NXDOMAIN | dns.resolver.NoAnswer):
                continue
            if isinstance(answer, BaseException):
                if isinstance(answer, Exception):
                    error = answer
                continue
            out.extend(r.address for r in answer)
        return out, (error if not out else None)

    # endregion
