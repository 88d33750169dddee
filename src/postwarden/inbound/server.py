"""The inbound SMTP server: bounces, delay and success notices, and complaints come in here.

It is never a relay and never a catch-all. A recipient is accepted only at an account's bounce
domain, and only as a VERP address whose token verifies (``b+<token>@domain``) or as one of
the feedback addresses (``fbl@``, ``abuse@``, ``postmaster@``); every other recipient is
refused at RCPT. At DATA the raw mail is stored as it came (``inbound_mails``, state "new")
and 250 is answered at once: parsing happens afterwards (``postwarden.inbound.apply``), so a
parser fault never loses a bounce or makes the sender try again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from postwarden import accounts, clock, verp
from postwarden.store import raw as raw_sql

if TYPE_CHECKING:
    from postwarden.service import Parts

__all__ = ["FEEDBACK_LOCALS", "InboundServer"]

log = logging.getLogger(__name__)

FEEDBACK_LOCALS = frozenset({"fbl", "abuse", "postmaster"})
"""Local parts accepted at every bounce domain for feedback loops and complaints."""

DOMAIN_TTL = 5.0
"""Seconds the bounce domains are cached; an unknown domain re-reads them sooner."""
_MISS_REFRESH = 0.5
_MAX_RECIPIENTS = 100

REFUSED = "550 5.1.1 <{}>: Recipient address rejected: no such bounce address here"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
TOO_MANY_CONNECTIONS = b"421 4.7.0 Too many connections, try again later\r\n"


class _Handler:
    """aiosmtpd hooks; the decisions live on :class:`InboundServer`."""

    def __init__(self, server: InboundServer) -> None:
        self.server = server

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= _MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        try:
            accepted = await self.server.accepts(address)
        except Exception:
            log.exception("cannot look up bounce domains")
            return "451 4.3.0 Temporary failure, try again later"
        if not accepted:
            return REFUSED.format(address)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        mail_from = envelope.mail_from or ""
        if mail_from == "<>":  # aiosmtpd keeps the null reverse-path as "<>"
            mail_from = ""
        # SMTPUTF8 arguments arrive surrogate-escaped when they are not UTF-8.
        mail_from = mail_from.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        peer = session.peer
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        try:
            inbound_id = await self.server.store_soon(
                peer_text, mail_from, list(envelope.rcpt_tos), content
            )
        except Exception:
            # Not stored: a temporary failure, so the sender keeps it and tries again.
            log.exception("cannot store an inbound mail from %s", peer_text)
            return "451 4.3.0 Temporary failure storing the message, try again later"
        self.server.wake.set()
        return f"250 2.0.0 Ok: queued as {inbound_id}"


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ADDRESS = re.compile(
    rf"\s*<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>\s*(.*)", re.DOTALL
)
"""``<dot-atom@domain>`` and what follows: the addresses bounces and feedback come to."""


class _InboundSMTP(SMTP):
    """aiosmtpd's protocol with a connection limit and an enhanced code on oversized mail."""

    # Bounce mails from careless MTAs carry lines longer than RFC 5321's 1000 octets; refusing
    # them would lose the bounce, so be lenient (the size limit still bounds the whole mail).
    line_length_limit = 16 * 1024

    def __init__(self, owner: InboundServer, **kwargs: Any) -> None:
        super().__init__(_Handler(owner), **kwargs)
        self._owner = owner
        self._refused = False
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        owner = self._owner
        if self._original_transport is None and not self._counted:  # not the STARTTLS upgrade
            if len(owner._transports) >= owner.max_connections:
                self._refused = True
                log.warning("inbound connection refused: %d open", len(owner._transports))
                transport.write(TOO_MANY_CONNECTIONS)  # type: ignore[attr-defined]
                transport.close()
                return
            owner._transports.add(transport)
            self._counted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self.transport is not None:
            self._owner._transports.discard(self.transport)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd parses every address with the email package's RFC 5322 parser, which was
        # a tenth of the inbound server's time; a plain <dot-atom@domain> needs a regex.
        match = _SIMPLE_ADDRESS.fullmatch(arg) if arg else None
        if match is None:
            return super()._getaddr(arg)
        address = match.group(1)
        local_limit = self.local_part_limit
        if local_limit and len(address.rpartition("@")[0]) > local_limit:
            return None, None
        return address, match.group(2)

    async def push(self, status: str | bytes) -> None:
        # aiosmtpd words its size refusals without an enhanced status code.
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else status
        if text.startswith("552 Error:"):
            status = TOO_BIG
        await super().push(status)


class InboundServer:
    """The inbound SMTP listener. ``wake`` is set whenever a mail was stored."""

    def __init__(self, parts: Parts, *, host: str, port: int) -> None:
        self.parts = parts
        self.host = host
        self.port = port
        settings = parts.settings
        self.max_bytes = settings.inbound_max_bytes
        self.max_connections = settings.inbound_max_connections
        self.timeout = settings.inbound_timeout
        self.hostname = settings.helo_name
        self.wake = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._domains: dict[str, int] = {}
        self._domains_at = float("-inf")
        self._domains_lock = asyncio.Lock()
        self._to_store: list[tuple[tuple[str, str, list[str], bytes], asyncio.Future[int]]] = []
        self._storing = False
        self._store_task: asyncio.Future[None] | None = None

    # region lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _InboundSMTP(
                self,
                hostname=self.hostname,
                ident="Postwarden inbound",
                data_size_limit=self.max_bytes,
                timeout=self.timeout,
                enable_SMTPUTF8=True,
                loop=loop,
            ),
            self.host,
            self.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("inbound SMTP on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for transport in list(self._transports):
            transport.close()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> InboundServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # endregion

    async def bounce_domains(self, *, missing: str | None = None) -> dict[str, int]:
        """The accounts' bounce domains, cached for :data:`DOMAIN_TTL` seconds; a domain not
        in the cache re-reads it after half a second, so a new account works at once."""
        age = time.monotonic() - self._domains_at
        if age > DOMAIN_TTL or (
            missing is not None and missing not in self._domains and age > _MISS_REFRESH
        ):
            async with self._domains_lock:
                age = time.monotonic() - self._domains_at
                if age > DOMAIN_TTL or (
                    missing is not None and missing not in self._domains and age > _MISS_REFRESH
                ):
                    self._domains = await asyncio.to_thread(self._load_domains)
                    self._domains_at = time.monotonic()
        return self._domains

    def _load_domains(self) -> dict[str, int]:
        with self.parts.engine.connect() as conn:
            return accounts.bounce_domains(conn)

    async def accepts(self, address: str) -> bool:
        """True for a VERP address that verifies or a feedback address at a bounce domain."""
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at or not local:
            return False
        domain = domain.lower().rstrip(".")
        if domain not in await self.bounce_domains(missing=domain):
            return False
        local = local.lower()
        if local in FEEDBACK_LOCALS:
            return True
        return local.startswith(verp.PREFIX) and (
            verp.message_id_of(self.parts.secret, local) is not None
        )

    async def store_soon(self, peer: str, mail_from: str, rcpt_to: list[str], raw: bytes) -> int:
        """Store one mail with the others whose DATA ended meanwhile (group commit): one
        write transaction for all of them, in a thread. Returns once this mail is committed;
        raises if its transaction failed (then none of that group was stored)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._to_store.append(((peer, mail_from, rcpt_to, raw), future))
        if not self._storing:
            self._storing = True
            self._store_task = asyncio.ensure_future(self._store_pending())
        return await future

    async def _store_pending(self) -> None:
        try:
            while self._to_store:
                group, self._to_store = self._to_store, []
                try:
                    ids = await asyncio.to_thread(self.store_many, [args for args, _f in group])
                except Exception as exc:
                    for _args, future in group:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_args, future), inbound_id in zip(group, ids, strict=True):
                        if not future.done():
                            future.set_result(inbound_id)
        finally:
            self._storing = False

    def store(self, peer: str, mail_from: str, rcpt_to: list[str], raw: bytes) -> int:
        """Keep one accepted mail, raw; returns its id (runs in a thread)."""
        return self.store_many([(peer, mail_from, rcpt_to, raw)])[0]

    def store_many(self, mails: list[tuple[str, str, list[str], bytes]]) -> list[int]:
        """Keep accepted mails, raw, in one transaction; returns their ids (in a thread)."""
        ids: list[int] = []
        with self.parts.engine.begin() as conn:
            sql = raw_sql.dialect_of(conn)
            statement = (
                "INSERT INTO inbound_mails (received_at, peer, mail_from, rcpt_to, raw, state) "
                f"VALUES ({sql.mark}, {sql.mark}, {sql.mark}, {sql.mark}"
                f"{'::json' if sql.name == 'postgresql' else ''}, {sql.mark}, {sql.mark}) "
                "RETURNING id"
            )
            received_at = sql.when(clock.now())
            for peer, mail_from, rcpt_to, raw in mails:
                inbound_id = conn.exec_driver_sql(
                    statement,
                    (received_at, peer[:100], mail_from[:320], sql.json(rcpt_to), raw, "new"),
                ).scalar()
                assert inbound_id is not None
                ids.append(int(inbound_id))
        return ids
