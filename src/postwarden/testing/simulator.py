"""Recipient-side SMTP simulator on loopback: a test and demo harness.

It answers like real receiving servers, and Postwarden talks real SMTP to it. It also runs a tiny
authoritative DNS responder (UDP) so the MX paths go through real dnspython:

- each deliverable domain ``d`` -> ``MX 10 mx.d.``, and ``mx.d.`` -> ``A 127.0.0.1``;
- each null-MX domain -> ``MX 0 .`` (RFC 7505);
- each A-only domain -> ``A 127.0.0.1`` and no MX (RFC 5321 implicit MX);
- each SERVFAIL domain -> SERVFAIL; anything else -> NXDOMAIN.

MX records carry no port: point Postwarden at :attr:`Simulator.port` with ``routes`` (or with
``mx_port`` and ``dns_server=("127.0.0.1", sim.dns_port)``).

Behaviour by the recipient's local part (prefix match, case-insensitive):

==============================  ==========================================================
``unknown*``, ``nosuchuser*``   RCPT -> ``550 5.1.1 <addr>: Recipient address rejected: User
                                unknown in virtual mailbox table``
``full*``                       RCPT -> ``452 4.2.2 <addr>: Mailbox full``
``grey*``                       RCPT -> ``451 4.7.1 ... Greylisted, please try again in N
                                seconds`` the first time per (sender domain, recipient);
                                accepted once ``greylist_delay`` seconds have passed
``spam*``                       DATA (after the data) -> ``554 5.7.1 Service unavailable;
                                Client host [127.0.0.1] blocked using zen.spamhaus.org``
``slow*``                       waits ``slow_delay`` seconds before answering DATA
``latebounce*``                 250, then after ``late_bounce_delay`` seconds an RFC 3464 DSN
                                (5.1.1) is mailed from ``<>`` to the envelope sender, by SMTP
                                to ``bounce_target``
anything else                   ``250 2.0.0 Ok: queued as <id>``
==============================  ==========================================================
"""

from __future__ import annotations

import asyncio
import collections
import email.parser
import email.utils
import itertools
import re
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import aiosmtplib
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["Received", "SentBounce", "Simulator", "build_dsn", "free_port"]

DEFAULT_DOMAINS = ("example.test", "corp.test", "mail.test")
DEFAULT_NULL_MX = ("nullmx.test",)
DEFAULT_A_ONLY = ("amx.test",)
DEFAULT_SERVFAIL = ("servfail.test",)
_TTL = 60

_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
}


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted envelope (``mail_from`` is ``""`` for the null sender)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    peer: str
    received_at: datetime


@dataclass(slots=True)
class SentBounce:
    """One DSN the simulator mailed (or failed to mail) to ``bounce_target``."""

    to: str
    recipient: str
    data: bytes
    error: str | None = None


def _header_block(original: bytes) -> bytes:
    end = original.find(b"\r\n\r\n")
    if end < 0:
        end = original.find(b"\n\n")
    block = original if end < 0 else original[:end]
    return re.sub(rb"\r?\n", b"\r\n", block).rstrip(b"\r\n") + b"\r\n"


def build_dsn(
    *,
    reporting_mta: str,
    original: bytes,
    recipient: str,
    status: str,
    diagnostic: str,
    action: str = "failed",
    sender: str | None = None,
    arrival_date: datetime | None = None,
) -> bytes:
    """Build an RFC 3464 delivery status notification (multipart/report), CRLF line endings.

    ``diagnostic`` is the remote reply (``"550 5.1.1 ..."``); ``"smtp; "`` is prefixed unless
    it already names a diagnostic type. ``sender`` fills the To header (the original envelope
    sender); by default the original's Return-Path or From header is used.
    """
    headers = _header_block(original)
    if sender is None:
        parsed = email.parser.BytesHeaderParser().parsebytes(headers)
        sender = email.utils.parseaddr(parsed.get("Return-Path") or parsed.get("From") or "")[1]
    if not re.match(r"^[A-Za-z][\w.-]*;", diagnostic):
        diagnostic = f"smtp; {diagnostic}"
    arrival = email.utils.format_datetime(arrival_date or datetime.now(UTC))
    boundary = f"{uuid.uuid4().hex}/{reporting_mta}"
    subject = _SUBJECTS.get(action, "Delivery Status Notification")
    if action == "failed":
        prose = (
            "I'm sorry to have to inform you that your message could not\r\n"
            "be delivered to one or more recipients."
        )
    else:
        prose = f"This is a delivery status notification (action: {action})."
    text = (
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n"
        f"To: <{sender}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {email.utils.format_datetime(datetime.now(UTC))}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@{reporting_mta}>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        f'\tboundary="{boundary}"\r\n'
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Notification\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"This is the mail system at host {reporting_mta}.\r\n"
        "\r\n"
        f"{prose}\r\n"
        "\r\n"
        f"<{recipient}>: {diagnostic.split(';', 1)[1].strip()}\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        f"Reporting-MTA: dns; {reporting_mta}\r\n"
        f"Arrival-Date: {arrival}\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Original-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: {diagnostic}\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
    ).encode()
    return text + headers + f"\r\n--{boundary}--\r\n".encode()


def _local(address: str) -> str:
    return address.rpartition("@")[0].lower() if "@" in address else address.lower()


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


class _Handler:
    """aiosmtpd hooks; the decisions live on :class:`Simulator`."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.sim.rcpt_reply(envelope.mail_from or "", address)
        if reply is None:
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Ok"
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return await self.sim.data_reply(session, envelope)


class _SimSMTP(SMTP):
    """aiosmtpd's server protocol, counting connections so ``stop()`` can close them."""

    def __init__(self, sim: Simulator, **kwargs: Any) -> None:
        super().__init__(_Handler(sim), **kwargs)
        self._sim = sim

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and transport not in self._sim._transports:
            self._sim._transports.add(transport)
            self._sim.counters["connections"] += 1
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.transport is not None:
            self._sim._transports.discard(self.transport)
        super().connection_lost(error)


class _DNSResponder(asyncio.DatagramProtocol):
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        if self.transport is not None:
            self.transport.sendto(self.sim.dns_answer(query).to_wire(), addr)


class Simulator:
    """Receiving SMTP servers for the simulated domains, plus their DNS, on 127.0.0.1."""

    def __init__(
        self,
        *,
        port: int = 0,
        dns_port: int = 0,
        domains: Iterable[str] = DEFAULT_DOMAINS,
        null_mx_domains: Iterable[str] = DEFAULT_NULL_MX,
        a_only_domains: Iterable[str] = DEFAULT_A_ONLY,
        servfail_domains: Iterable[str] = DEFAULT_SERVFAIL,
        hostname: str = "mx.simulator.test",
        greylist_delay: float = 1.0,
        slow_delay: float = 5.0,
        late_bounce_delay: float = 1.0,
        bounce_target: tuple[str, int] | None = None,
    ) -> None:
        self.port = port
        self.dns_port = dns_port
        self.hostname = hostname
        self.domains = tuple(d.lower() for d in domains)
        self.null_mx_domains = tuple(d.lower() for d in null_mx_domains)
        self.a_only_domains = tuple(d.lower() for d in a_only_domains)
        self.servfail_domains = frozenset(d.lower() for d in servfail_domains)
        self.greylist_delay = greylist_delay
        self.slow_delay = slow_delay
        self.late_bounce_delay = late_bounce_delay
        self.bounce_target = bounce_target
        self.received: list[Received] = []
        self.bounces: list[SentBounce] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self._greylist: dict[tuple[str, str], float] = {}
        self._queue_ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._dns: asyncio.DatagramTransport | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._zone = self._build_zone()

    # region lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _SimSMTP(self, hostname=self.hostname, ident="Postwarden simulator", loop=loop),
            "127.0.0.1",
            self.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DNSResponder(self), local_addr=("127.0.0.1", self.dns_port)
        )
        self._dns = cast(asyncio.DatagramTransport, transport)
        self.dns_port = transport.get_extra_info("sockname")[1]

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            for transport in list(self._transports):
                transport.close()
            await self._server.wait_closed()
            self._server = None
        if self._dns is not None:
            self._dns.close()
            self._dns = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # endregion

    # region SMTP behaviour

    def rcpt_reply(self, mail_from: str, address: str) -> str | None:
        """The reply to RCPT TO, or None to accept."""
        local = _local(address)
        if local.startswith(("unknown", "nosuchuser")):
            self.counters["rejected_rcpt"] += 1
            return (
                f"550 5.1.1 <{address}>: Recipient address rejected: "
                "User unknown in virtual mailbox table"
            )
        if local.startswith("full"):
            self.counters["deferred_rcpt"] += 1
            return f"452 4.2.2 <{address}>: Mailbox full"
        if local.startswith("grey"):
            key = (_domain(mail_from), address.lower())
            now = time.monotonic()
            first = self._greylist.setdefault(key, now)
            if now - first < self.greylist_delay:
                self.counters["greylisted"] += 1
                return (
                    f"451 4.7.1 <{address}>: Recipient address rejected: Greylisted, "
                    f"please try again in {self.greylist_delay:g} seconds"
                )
        return None

    async def data_reply(self, session: Session, envelope: Envelope) -> str:
        locals_ = [_local(r) for r in envelope.rcpt_tos]
        if any(lp.startswith("slow") for lp in locals_):
            await asyncio.sleep(self.slow_delay)
        if any(lp.startswith("spam") for lp in locals_):
            self.counters["rejected_data"] += 1
            return (
                "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using "
                "zen.spamhaus.org"
            )
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode()
        mail_from = envelope.mail_from or ""
        if mail_from == "<>":  # aiosmtpd keeps the null reverse-path as "<>"
            mail_from = ""
        peer = session.peer
        self.received.append(
            Received(
                mail_from=mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=content,
                peer=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer),
                received_at=datetime.now(UTC),
            )
        )
        self.counters["accepted"] += 1
        for rcpt, lp in zip(envelope.rcpt_tos, locals_, strict=True):
            if lp.startswith("latebounce") and mail_from:  # never bounce a bounce
                task = asyncio.get_running_loop().create_task(
                    self._late_bounce(mail_from, rcpt, content)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return f"250 2.0.0 Ok: queued as SIM{next(self._queue_ids):06d}"

    async def _late_bounce(self, mail_from: str, rcpt: str, original: bytes) -> None:
        await asyncio.sleep(self.late_bounce_delay)
        reply = (
            f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table"
        )
        dsn = build_dsn(
            reporting_mta=self.hostname,
            original=original,
            recipient=rcpt,
            status="5.1.1",
            diagnostic=reply,
            sender=mail_from,
        )
        bounce = SentBounce(to=mail_from, recipient=rcpt, data=dsn)
        self.bounces.append(bounce)
        if self.bounce_target is None:
            bounce.error = "no bounce_target configured"
            return
        host, port = self.bounce_target
        client = aiosmtplib.SMTP(
            hostname=host, port=port, local_hostname=self.hostname, start_tls=False, timeout=10
        )
        try:
            await client.connect()
            await client.mail("")
            await client.rcpt(mail_from)
            await client.data(dsn)
            await client.quit()
            self.counters["bounces_sent"] += 1
        except (aiosmtplib.SMTPException, OSError) as exc:
            bounce.error = str(exc)
            self.counters["bounce_errors"] += 1
        finally:
            client.close()

    # endregion

    # region DNS

    def _build_zone(self) -> dict[str, dict[int, list[str]]]:
        zone: dict[str, dict[int, list[str]]] = {}
        for d in self.domains:
            zone[d] = {dns.rdatatype.MX: [f"10 mx.{d}."]}
            zone[f"mx.{d}"] = {dns.rdatatype.A: ["127.0.0.1"]}
        for d in self.null_mx_domains:
            zone[d] = {dns.rdatatype.MX: ["0 ."]}
        for d in self.a_only_domains:
            zone[d] = {dns.rdatatype.A: ["127.0.0.1"]}
        return zone

    def dns_answer(self, query: dns.message.Message) -> dns.message.Message:
        """The authoritative answer to ``query`` for the simulated zones."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        if name in self.servfail_domains:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        records = self._zone.get(name)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        rdatas = records.get(question.rdtype)
        if rdatas:
            response.answer.append(
                dns.rrset.from_text_list(
                    question.name, _TTL, dns.rdataclass.IN, question.rdtype, rdatas
                )
            )
        return response

    # endregion


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
