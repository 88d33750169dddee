"""The inbound SMTP server: bounces, delay and success notices, and complaints come in here.

It is never a relay and never a catch-all. A recipient is accepted only at an account's bounce
domain, and only as a VERP address whose token verifies (``b+<token>@domain``) or as one of
the feedback addresses (``fbl@``, ``abuse@``, ``postmaster@``); every other recipient is
refused at RCPT. At DATA the raw mail is stored as it came (``inbound_mails``, state "new")
and 250 is answered at once: parsing happens afterwards (``postwarden.inbound.mail.apply``), so a
parser fault never loses a bounce or makes the sender try again.

Liberal in what it accepts: lines of any length (the size limit bounds the mail). Where it
refuses for a limit of its own (open connections, in all and per client address, recipients
per mail, a failure to store) it answers 4xx, so the sender keeps the mail and tries again.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import time

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import Connection

from postwarden.domain import verp
from postwarden.inbound.mail import aiosmtpd_compat
from postwarden.runtime import Parts
from postwarden.store import accounts, inbound_queue

__all__ = ["FEEDBACK_LOCALS", "InboundServer"]

log = logging.getLogger(__name__)

FEEDBACK_LOCALS = frozenset({"fbl", "abuse", "postmaster"})
"""Local parts accepted at every bounce domain for feedback loops and complaints."""

DOMAIN_TTL = 5.0
"""Seconds the bounce domains are cached; an unknown domain re-reads them sooner."""
_MISS_REFRESH = 0.5
_MAX_RECIPIENTS = 100

REFUSED = "550 5.1.1 <{}>: Recipient address rejected: no such bounce address here"
TEMPORARY = "451 4.3.0 Temporary failure, try again later"
TOO_MANY_CONNECTIONS = b"421 4.7.0 Too many connections, try again later\r\n"
TOO_MANY_FROM_CLIENT = b"421 4.7.0 Too many connections from your address, try again later\r\n"


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
            return TEMPORARY
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

    async def handle_exception(self, error: Exception) -> str:
        # A fault of ours is never the sender's: aiosmtpd would answer 500 and lose the mail.
        log.error("inbound SMTP session failed", exc_info=error)
        return TEMPORARY


class InboundServer:
    """The inbound SMTP listener. ``wake`` is set whenever a mail was stored."""

    def __init__(self, parts: Parts, *, host: str, port: int) -> None:
        self.parts = parts
        self.host = host
        self.port = port
        settings = parts.settings
        self.max_bytes = settings.inbound_max_bytes
        self.max_connections = settings.inbound_max_connections
        self.max_per_client = settings.inbound_max_connections_per_client
        self.timeout = settings.inbound_timeout
        self.hostname = settings.helo_name
        self.wake = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._per_client: collections.Counter[str] = collections.Counter()
        self._domains: dict[str, int] = {}
        self._domains_at = float("-inf")
        self._domains_lock = asyncio.Lock()
        self._to_store: list[tuple[tuple[str, str, list[str], bytes], asyncio.Future[int]]] = []
        self._storing = False
        self._store_task: asyncio.Future[None] | None = None
        self._store_conn: Connection | None = None

    # region lifecycle

    async def start(self) -> None:
        # What start-up made (modules, settings, the engine: 100,000+ objects) lives as long
        # as the process. Frozen, the collector no longer walks it in each full collection,
        # pauses of tens of milliseconds that held up every SMTP session (a tenth of the
        # server's time at 1,000 mails/s).
        gc.freeze()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: aiosmtpd_compat.SMTP(
                _Handler(self),
                admit=self._admit,
                release=self._release,
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
        if self._store_task is not None:
            await self._store_task
        if self._store_conn is not None:
            self._store_conn.close()
            self._store_conn = None

    async def __aenter__(self) -> InboundServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _admit(self, transport: asyncio.BaseTransport) -> bytes | None:
        """Serve a new connection unless the server, or its client's address, has as many
        open as allowed: idle sockets from one client must not keep out everyone's bounces.
        Refusals are 421 (try again later): a local limit, never the sender's fault."""
        client = _client_of(transport)
        if len(self._transports) >= self.max_connections:
            log.warning("inbound connection refused: %d open", len(self._transports))
            return TOO_MANY_CONNECTIONS
        if self._per_client[client] >= self.max_per_client:
            log.warning("inbound connection from %s refused: %d open", client, self.max_per_client)
            return TOO_MANY_FROM_CLIENT
        self._transports.add(transport)
        self._per_client[client] += 1
        return None

    def _release(self, transport: asyncio.BaseTransport) -> None:
        if transport in self._transports:
            self._transports.discard(transport)
            client = _client_of(transport)
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]

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
                    ids = await asyncio.to_thread(self._store_group, [args for args, _f in group])
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

    def _store_group(self, mails: list[tuple[str, str, list[str], bytes]]) -> list[int]:
        """:meth:`store_many` on a connection kept for the groups (one at a time, see
        :meth:`store_soon`): checking one out of the pool for each group was a third of a
        small group's cost. After a failure it is dropped, as it may be broken."""
        conn = self._store_conn
        if conn is None:
            conn = self._store_conn = self.parts.engine.connect()
        try:
            return self.store_many(mails, conn)
        except Exception:
            self._store_conn = None
            conn.close()
            raise

    def store(self, peer: str, mail_from: str, rcpt_to: list[str], raw: bytes) -> int:
        """Keep one accepted mail, raw; returns its id (runs in a thread)."""
        return self.store_many([(peer, mail_from, rcpt_to, raw)])[0]

    def store_many(
        self, mails: list[tuple[str, str, list[str], bytes]], conn: Connection | None = None
    ) -> list[int]:
        """Keep accepted mails, raw, in one transaction (on ``conn``, or one from the pool);
        returns their ids (in a thread)."""
        if conn is None:
            with self.parts.engine.begin() as conn:
                return inbound_queue.store(conn, mails)
        with conn.begin():
            return inbound_queue.store(conn, mails)


def _client_of(transport: asyncio.BaseTransport) -> str:
    """The client's address (without its port): what the per-client limit counts."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")
