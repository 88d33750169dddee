"""aiosmtpd's SMTP protocol, made faster and more lenient where the inbound server needs it.

The one place Postwarden overrides aiosmtpd's private API; aiosmtpd's version range is pinned
in pyproject.toml, and tests/unit/test_aiosmtpd_compat.py fails when the library changes
under these overrides:

- ``smtp_DATA`` reads the data in chunks up to the next ``.<CRLF>`` (``self._reader``) instead
  of a coroutine round per line, the largest part of the server's time. Lines of any length
  are accepted (the size limit still bounds the mail): refusing a bounce for a long line, as
  aiosmtpd does, loses it. It relies on ``check_helo_needed``, ``check_auth_needed``,
  ``_call_handler_hook``, ``_set_post_data_state``, ``MISSING`` and ``_writer``.
- ``_getaddr`` reads a plain ``<dot-atom@domain>`` or ``<>`` with a regex: aiosmtpd parses each
  address with the email package's RFC 5322 parser (and defines a class on each call), a
  tenth of the server's time. Anything else goes to aiosmtpd's own.
- ``connection_made``/``connection_lost`` ask an ``admit`` callback whether to serve each new
  connection (the STARTTLS upgrade, seen by ``_original_transport``, is not a new one), and
  tell ``release`` when an admitted one ends; a refused one gets the callback's reply and is
  closed without a session.
- ``push`` gives aiosmtpd's size refusals (worded ``552 Error: ...``) an enhanced status code.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

from aiosmtpd import smtp

__all__ = ["SMTP", "TOO_BIG"]

log = logging.getLogger(__name__)

TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ADDRESS = re.compile(
    rf"\s*<((?:{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)?)>(\s*)(.*)", re.DOTALL
)
"""``<dot-atom@domain>`` or the null path ``<>`` (what every bounce comes from), and what
follows: the addresses bounces and feedback come to. (aiosmtpd keeps the spaces after ``<>``,
and only there.)"""


class SMTP(smtp.SMTP):
    """aiosmtpd's protocol with the overrides above. ``admit(transport)`` returns None to
    serve a new connection, or the reply (bytes, with CRLF) to refuse it with."""

    line_length_limit = 16 * 1024
    """The stream reader's buffer limit, and so the longest command line; DATA lines may be
    longer (they are read in chunks)."""

    def __init__(
        self,
        handler: Any,
        *,
        admit: Callable[[asyncio.BaseTransport], bytes | None],
        release: Callable[[asyncio.BaseTransport], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._admit = admit
        self._release = release
        self._admitted: asyncio.BaseTransport | None = None
        self._refused = False

    # region admission

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and self._admitted is None:  # not STARTTLS's
            refusal = self._admit(transport)
            if refusal is not None:
                self._refused = True
                transport.write(refusal)  # type: ignore[attr-defined]
                transport.close()
                return
            self._admitted = transport
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._admitted is not None:
            self._release(self._admitted)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    # endregion

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _SIMPLE_ADDRESS.fullmatch(arg) if arg else None
        if match is None:
            return super()._getaddr(arg)
        address, spaces, rest = match.groups()
        if not address:
            return "<>", spaces + rest  # like aiosmtpd, the null path reads "<>"
        local_limit = self.local_part_limit
        if local_limit and len(address.rpartition("@")[0]) > local_limit:
            return None, None
        return address, rest

    @smtp.syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
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
        else:
            # Dot-unstuffing (RFC 5321 4.5.2): a line's leading dot goes.
            if data.startswith(b"."):
                del data[0]
            content = bytes(data).replace(b"\r\n.", b"\r\n")
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is smtp.MISSING else status)

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
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else status
        if text.startswith("552 Error:"):
            status = TOO_BIG
        await super().push(status)
