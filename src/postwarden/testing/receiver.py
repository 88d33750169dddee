"""A webhook receiver on loopback that fails on purpose: a test, bench and demo harness.

A real HTTP/1.1 server (keep-alive, Content-Length bodies) that keeps every request it got and
answers by the request's path (prefix match):

=====================  =====================================================================
``/fail/<n>/...``      500 to the first ``n`` requests of each ``webhook-id``, then 200
``/error...``          always 500
``/slow/<s>/...``      waits ``s`` seconds (a float), then 200
``/hang...``           never answers (the client times out)
``/drop...``           closes the connection without an answer
anything else          200 ``{"ok": true}``
=====================  =====================================================================

"Connection refused" is a port nothing listens on: :func:`closed_port`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Received", "Receiver", "closed_port", "in_thread"]


@dataclass(frozen=True, slots=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic()
    status: int | None  # what was answered (None: nothing)


@dataclass
class Receiver:
    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    _seen: collections.Counter[str] = field(default_factory=collections.Counter)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def url(self, path: str = "/ok") -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def delivered(self, prefix: str = "/") -> list[Received]:
        """Requests under ``prefix`` answered 2xx."""
        return [
            r
            for r in self.received
            if r.path.startswith(prefix) and r.status is not None and 200 <= r.status < 300
        ]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _method, path, _version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status = await self._answer(path, headers)
                self.received.append(Received(path, headers, body, time.monotonic(), status))
                if status is None:
                    return
                text = b'{"ok": true}' if status == 200 else b'{"error": "on purpose"}'
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (status, len(text), text)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, path: str, headers: dict[str, str]) -> int | None:
        parts = path.strip("/").split("/")
        if path.startswith("/fail/"):
            webhook_id = headers.get("webhook-id", "")
            self._seen[webhook_id] += 1
            return 500 if self._seen[webhook_id] <= int(parts[1]) else 200
        if path.startswith("/error"):
            return 500
        if path.startswith("/slow/"):
            await asyncio.sleep(float(parts[1]))
            return 200
        if path.startswith("/hang"):
            await asyncio.sleep(3600)
        if path.startswith(("/hang", "/drop")):
            return None
        return 200


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def in_thread(receiver: Receiver | None = None) -> Iterator[Receiver]:
    """A receiver serving from a thread of its own (for synchronous tests and the bench)."""
    receiver = receiver or Receiver()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(receiver.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="webhook-receiver", daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield receiver
    finally:
        asyncio.run_coroutine_threadsafe(receiver.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def main(argv: list[str] | None = None) -> None:
    """``python -m postwarden.testing.receiver PORT``: serve until killed (the bench's receiver,
    in a process of its own)."""
    import sys

    port = int((argv if argv is not None else sys.argv[1:])[0])

    async def serve() -> None:
        await Receiver(port=port).start()
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
