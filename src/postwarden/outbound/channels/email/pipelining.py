"""Adapter: an aiosmtplib connection taken over for pipelined transactions (RFC 2920).

aiosmtplib waits for one reply per command and drops replies that arrive early, so once a
session is set up (greeting, STARTTLS, EHLO, AUTH through aiosmtplib's own methods) its
transport is taken from aiosmtplib's protocol and read by :class:`Replies`. That relies on what
aiosmtplib does not promise, checked by the "aiosmtplib adapter" tests in
``tests/integration/test_smtp_channel.py`` for the versions pyproject.toml allows:

- ``SMTP.transport`` is the connection's ``asyncio.Transport`` (``set_protocol`` included),
  also after STARTTLS;
- aiosmtplib's protocol holds no unread data once an awaited command has its reply;
- ``SMTP.close()`` still closes that transport after the take-over.
"""

from __future__ import annotations

import asyncio
import collections

import aiosmtplib


def take_over(client: aiosmtplib.SMTP) -> Replies | None:
    """Read ``client``'s connection with :class:`Replies` from now on; None (aiosmtplib keeps
    it) when its transport cannot change protocols."""
    transport = client.transport
    if transport is None or not hasattr(transport, "set_protocol"):
        return None
    return Replies(transport)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Replies(asyncio.Protocol):
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
