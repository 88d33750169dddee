"""The email channel's SMTP client: through a relay (smarthost) or directly to each recipient
domain's MX, one :class:`Attempt` per message. The email channel judges them
(:func:`postwarden.outbound.channels.email.channel.judge`).

Messages are grouped by next hop (the relay, or the recipient's domain); each hop gets up to
``per_domain_concurrency`` connections. Every command and reply of an attempt goes into
:attr:`Attempt.transcript`, so aiosmtplib's low-level methods are used (``connect``/``ehlo``/
``starttls``/``auth_*``/``mail``/``rcpt``/``data``/``quit``) instead of ``sendmail``. aiosmtplib
exceptions are mapped to outcomes here and nowhere else:

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
import ipaddress
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from postwarden import settings
from postwarden.domain import addresses
from postwarden.outbound.channels import base
from postwarden.outbound.channels.email import pipelining

_LONE_LF = re.compile(rb"(?<!\r)\n")
_LONE_CR = re.compile(rb"\r(?!\n)")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")

__all__ = ["Attempt", "Mail", "SMTPSender"]

T = TypeVar("T")

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_NEGATIVE_TTL = 60.0  # how long NXDOMAIN / null MX answers are cached at most


Outcome = Literal["accepted", "temporary", "permanent"]
Via = Literal["relay", "mx"]

RELAY = ""
"""The next hop of every message when a relay is configured (see :meth:`SMTPSender.next_hop`)."""


@dataclass(frozen=True, slots=True)
class Mail:
    """The email channel's payload (:attr:`base.Outgoing.payload`)."""

    mail_from: str  # per-message VERP return path, e.g. "b+Xy12ab@bounce.example.com"
    data: bytes  # the whole RFC 5322 message, CRLF line endings


Email = base.Outgoing[Mail]


@dataclass(frozen=True, slots=True)
class Attempt:
    """What became of one delivery attempt of one message, as SMTP saw it."""

    message_id: int
    outcome: Outcome
    code: int | None  # SMTP reply code that decided it; None when there was no reply
    enhanced: str | None  # "5.1.1" parsed from the reply, if any
    text: str  # reply text, or a plain description of the network error
    remote: str | None  # "host:port" actually talked to
    via: Via  # relay -> 2xx means "sent"; mx -> 2xx means "delivered"
    transcript: str  # the SMTP conversation; never the body, never an AUTH secret
    started_at: datetime  # aware UTC
    duration_ms: int


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

    outcome: Outcome
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


def _outcome(code: int | None) -> Outcome:
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


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def _pieces(batch: Sequence[Email], size: int, concurrency: int) -> list[Sequence[Email]]:
    """Split a batch into connections' pieces of at most ``size`` messages, of even sizes and
    in a whole number of rounds of ``concurrency`` connections: 500 messages, 100 a connection
    and 4 at once make 8 pieces of 62 or 63 (two full rounds), not 5 of 100 whose last one
    would run alone while the other connections are done."""
    count = -(-len(batch) // max(size, 1))
    if count > concurrency > 0:
        count = -(-count // concurrency) * concurrency
    count = min(max(count, 1), len(batch))
    step, extra = divmod(len(batch), count)
    pieces: list[Sequence[Email]] = []
    start = 0
    for i in range(count):
        end = start + step + (1 if i < extra else 0)
        pieces.append(batch[start:end])
        start = end
    return pieces


class _Session:
    """One SMTP connection and its transcript."""

    def __init__(self, channel: SMTPSender, target: _Target, *, tls: bool) -> None:
        self.channel = channel
        self.config = channel.config
        self.helo_name = channel.helo_name
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
            local_hostname=channel.helo_name,
            timeout=self.config.command_timeout,
            use_tls=implicit,
            start_tls=False,
            tls_context=channel.tls_context(relay=relay is not None) if implicit else None,
        )
        self.prefix = ""
        self.pipe: pipelining.Replies | None = None
        # The next transaction's MAIL, RCPT and DATA, written after the previous message's
        # body in the same write (RFC 2920 allows the end of data to start a group): the
        # message they are for, and its transcript lines so far.
        self.ahead_for: Email | None = None
        self.ahead_lines: list[str] = []

    def pipeline(self) -> None:
        """Take the connection over for pipelined transactions when the server offers
        PIPELINING (after greeting, STARTTLS, EHLO and AUTH went through aiosmtplib)."""
        if self.client.supports_extension("pipelining"):
            self.pipe = pipelining.take_over(self.client)

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
                aw = client.auth_plain(relay.username, relay.password.get_secret_value())
            else:
                label = "AUTH LOGIN ****"
                aw = client.auth_login(relay.username, relay.password.get_secret_value())
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
                f"EHLO {self.helo_name}",
                client.ehlo(timeout=cfg.command_timeout),
                what="EHLO",
                timeout=cfg.command_timeout,
            )
        except _Failure as exc:
            if not exc.alive:
                raise
            await self.exchange(
                self.lines,
                f"HELO {self.helo_name}",
                client.helo(timeout=cfg.command_timeout),
                what="HELO",
                timeout=cfg.command_timeout,
            )

    async def send(
        self, out: Email, next_out: Email | None = None
    ) -> tuple[Outcome, int | None, str | None, str, list[str], bool]:
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
        mail_from, rcpt_to, data = out.payload.mail_from, out.to, out.payload.data
        if "size" in client.esmtp_extensions:
            options.append(f"SIZE={len(data)}")
        if not data.isascii() and "8bitmime" in client.esmtp_extensions:
            options.append("BODY=8BITMIME")
        if not (mail_from.isascii() and rcpt_to.isascii()):
            if "smtputf8" not in client.esmtp_extensions:
                text = f"the address is not ASCII and {self.remote} does not offer SMTPUTF8"
                self.log(lines, f"error: {text}")
                return "permanent", None, "5.6.7", text, lines, True
            options.append("SMTPUTF8")
            encoding = "utf-8"
        mail = f"MAIL FROM:<{mail_from}>"
        if options:
            mail += " " + " ".join(options)
        if self.pipe is not None:
            if _UNSAFE.search(mail_from) or _UNSAFE.search(rcpt_to):
                text = "cannot send MAIL FROM: Command arg contains a prohibited control character"
                self.log(lines, f"error: {text}")
                return "temporary", None, None, text, lines, True
            rcpt = f"RCPT TO:<{rcpt_to}>"
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
                client.mail(mail_from, options=options, encoding=encoding, timeout=ct),
                what="MAIL FROM",
                timeout=ct,
            )
            await self.exchange(
                lines,
                f"RCPT TO:<{rcpt_to}>",
                client.rcpt(rcpt_to, encoding=encoding, timeout=ct),
                what="RCPT TO",
                timeout=ct,
            )
            self.log(lines, "C: DATA")
            self.log(lines, f"C: <message {len(data)} bytes>")
            resp = await self.exchange(
                lines,
                None,
                client.data(data, timeout=cfg.data_timeout),
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

    def _ahead(self, out: Email) -> tuple[bytes, str] | None:
        """The commands of ``out``'s transaction and their transcript text, when they can be
        written ahead (plain ASCII, nothing send() would refuse before writing)."""
        client = self.client
        mail_from, rcpt_to, data = out.payload.mail_from, out.to, out.payload.data
        if not (mail_from.isascii() and rcpt_to.isascii()):
            return None
        if _UNSAFE.search(mail_from) or _UNSAFE.search(rcpt_to):
            return None
        mail = f"MAIL FROM:<{mail_from}>"
        options = []
        if "size" in client.esmtp_extensions:
            options.append(f"SIZE={len(data)}")
        if not data.isascii() and "8bitmime" in client.esmtp_extensions:
            options.append("BODY=8BITMIME")
        if options:
            mail += " " + " ".join(options)
        rcpt = f"RCPT TO:<{rcpt_to}>"
        ts = _now()
        return (
            f"{mail}\r\n{rcpt}\r\nDATA\r\n".encode("ascii"),
            f"{ts} C: {mail}\n{ts} C: {rcpt}\n{ts} C: DATA\n",
        )

    async def _send_pipelined(
        self,
        out: Email,
        lines: list[str],
        next_out: Email | None,
        *,
        sent: bool,
    ) -> tuple[Outcome, int | None, str | None, str, list[str], bool]:
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
                body = out.payload.data
                data = _data_section(body)
                self.log(lines, f"C: <message {len(body)} bytes>")
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
    ) -> tuple[Outcome, int | None, str | None, str, list[str], bool]:
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


class SMTPSender:
    """Send built messages over SMTP (see the module docstring for the outcome rules)."""

    def __init__(self, config: settings.SMTPSettings, *, helo_name: str | None = None) -> None:
        self.config = config
        self.helo_name = helo_name or socket.getfqdn()
        self.relay = config.relay
        self.via: Via = "relay" if config.relay is not None else "mx"
        self._routes = config.routes
        self._tls: dict[bool, ssl.SSLContext] = {}
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._mx_cache: dict[str, tuple[float, list[_Target] | _Undeliverable]] = {}
        self._mx_inflight: dict[str, asyncio.Task[tuple[list[_Target] | _Undeliverable, float]]]
        self._mx_inflight = {}
        self._slots: dict[str, list[Any]] = {}  # domain -> [Semaphore, users]

    # region public API

    def next_hop(self, rcpt: str) -> str:
        """Where a message goes next: :data:`RELAY`, or its recipient's domain."""
        if self.relay is not None:
            return RELAY
        return addresses.domain_of(rcpt).lower().rstrip(".")

    async def send(self, batch: Sequence[Email]) -> list[Attempt]:
        """Send ``batch`` grouped by next hop, the hops at once; one result per item, in the
        same order."""
        hops: dict[str, list[int]] = {}
        next_hop = self.next_hop
        for i, out in enumerate(batch):
            hops.setdefault(next_hop(out.to), []).append(i)
        if len(hops) == 1:
            ((hop, _),) = hops.items()
            return await self.send_many(hop, batch)
        done = await asyncio.gather(
            *(self.send_many(hop, [batch[i] for i in at]) for hop, at in hops.items())
        )
        placed: dict[int, Attempt] = {}
        for at, attempts in zip(hops.values(), done, strict=True):
            placed.update(zip(at, attempts, strict=True))
        return [placed[i] for i in range(len(batch))]

    async def send_many(self, hop: str, batch: Sequence[Email]) -> list[Attempt]:
        """Send ``batch`` (all for next hop ``hop``: see :meth:`next_hop`); one result per item,
        same order. The hop's connections are shared by every call for it at the time."""
        if not batch:
            return []
        domain = hop
        via = self.via
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

        async def run(piece: Sequence[Email]) -> list[Attempt]:
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
        """Forget cached DNS answers; connections never outlive :meth:`send_many`."""
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
        out: Email,
        decision: _Undeliverable,
        via: Via,
        started: datetime,
        duration_ms: int,
    ) -> Attempt:
        return Attempt(
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
        self, piece: Sequence[Email], targets: list[_Target], via: Via
    ) -> list[Attempt]:
        """Send one piece over one connection (plus one fresh connection if it breaks)."""
        results: list[Attempt | None] = [None] * len(piece)
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
        piece: Sequence[Email],
        pending: list[int],
        results: list[Attempt | None],
        via: Via,
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
    def _result(prefix: str, lines: list[str], fields: tuple[Any, ...]) -> Attempt:
        message_id, outcome, code, enhanced, text, remote, via, started, ms = fields
        return Attempt(
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
            ns = self.config.dns_server
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
        for host, (found, error) in zip(hosts, lookups, strict=True):
            targets.extend(_Target(host, a, self.config.mx_port) for a in found)
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
        found, error = await self._addresses(domain)
        if found:
            return [_Target(domain, a, self.config.mx_port) for a in found], min(
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
