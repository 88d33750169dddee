"""The inbound SMTP server: bounces, delay and success notices, and complaints come in here.

It is never a relay and never a catch-all. A recipient is accepted only at an account's bounce
domain, and only as a VERP address whose token verifies (``b+<token>@domain``) or as one of
the feedback addresses (``fbl@``, ``abuse@``, ``postmaster@``); every other recipient is
refused at RCPT. At DATA the raw mail is stored as it came (``inbound_mails``, state "new")
and 250 is answered at once: parsing happens afterwards (``postwarden.inbound.mail.apply``), so a
parser fault never loses a bounce or makes the sender try again.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax
from sqlalchemy import Connection

from postwarden.domain import clock, verp
from postwarden.runtime import Parts
from postwarden.store import accounts, batch

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
    rf"\s*<((?:{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)?)>\s*(.*)", re.DOTALL
)
"""``<dot-atom@domain>`` or the null path ``<>`` (what every bounce comes from), and what
follows: the addresses bounces and feedback come to."""


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
        # aiosmtpd parses every address with the email package's RFC 5322 parser (and defines
        # a class on each call), which was a tenth of the inbound server's time; a plain
        # <dot-atom@domain> or <> needs a regex. Like aiosmtpd, the null path reads "<>".
        match = _SIMPLE_ADDRESS.fullmatch(arg) if arg else None
        if match is None:
            return super()._getaddr(arg)
        address = match.group(1) or "<>"
        local_limit = self.local_part_limit
        if local_limit and len(address.rpartition("@")[0]) > local_limit:
            return None, None
        return address, match.group(2)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd reads the data a line at a time, a coroutine round per line: that loop was
        # the largest part of the server's time. Here each read takes everything up to the
        # next ".<CRLF>", which ends the data when it starts a line; the same refusals follow.
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = await self._read_data()
        if data is None:
            status = TOO_BIG
        elif len(data) > self.line_length_limit and (
            max(map(len, data.split(b"\r\n"))) > self.line_length_limit
        ):
            status = "500 Line too long (see RFC5321 4.5.3.1.6)"
        else:
            # Dot-unstuffing (RFC 5321 4.5.2): a line's leading dot goes.
            if data.startswith(b"."):
                del data[0]
            content = bytes(data).replace(b"\r\n.", b"\r\n")
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> bytearray | None:
        """The data up to the lone dot, without it; None when it exceeded the size limit
        (it is read to the end all the same, so the connection stays in step)."""
        reader = self._reader
        limit = self.data_size_limit
        data = bytearray()
        received = 0
        too_big = False
        while True:
            try:
                chunk = await reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as error:  # no ".<CRLF>" in the next chunk
                chunk = await reader.readexactly(error.consumed)
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self._writer.close()
                raise
            received += len(chunk)
            data += chunk
            ended = chunk.endswith(b".\r\n") and (received == 3 or data.endswith(b"\r\n.\r\n"))
            if limit and received - (3 if ended else 0) > limit:
                too_big = True
                del data[:-4]  # only what the end's detection needs
            if ended:
                if too_big:
                    return None
                del data[-3:]
                return data

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
        returns their ids (in a thread). The rows are made before the transaction begins: on
        SQLite it holds the write lock, which the applying of stored mails waits for."""
        sql = batch.dialect_for(self.parts.engine)
        received_at = sql.when(clock.now())
        rows = [
            (received_at, peer[:100], mail_from[:320], sql.json(rcpt_to), raw, "new")
            for peer, mail_from, rcpt_to, raw in mails
        ]
        if conn is None:
            with self.parts.engine.begin() as conn:
                return sql.insert_returning_ids(conn, "inbound_mails", _STORED_COLUMNS, rows)
        with conn.begin():
            return sql.insert_returning_ids(conn, "inbound_mails", _STORED_COLUMNS, rows)


_STORED_COLUMNS = ("received_at", "peer", "mail_from", "rcpt_to", "raw", "state")
