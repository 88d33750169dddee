"""Applying stored mails in a process of its own.

The inbound server's process speaks SMTP and stores each mail as it comes; parsing, matching
and recording them (:func:`postwarden.inbound.mail.apply.process_pending`) is CPU work which, in
the same process, competed with the SMTP sessions for one interpreter lock. In a worker
process of its own it runs on the other core: on two cores the server took about a tenth more
mails per second. The two processes share only the database (on SQLite their writes queue on
the file's write lock) and a socket: the server sends a byte whenever it stored a mail, and
closes the socket to stop the worker.

The worker is started as ``python -m postwarden.inbound.mail.worker``, not by multiprocessing's
spawn, which re-runs the parent's main script in the child: for ``postwarden inbound`` that
imports the whole CLI and web app, about a second of CPU as the first bounces arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from postwarden.inbound.mail import apply
from postwarden.runtime import Parts
from postwarden.settings import Settings
from postwarden.store import db

__all__ = ["Worker", "run"]

log = logging.getLogger(__name__)

RESTART_DELAY = 1.0
"""Seconds before a worker that ended is replaced (one that fails at once does not spin)."""

_LENGTH = struct.Struct("!I")


class Worker:
    """The worker process, started at once; ``wake`` it after storing a mail, ``close`` it to
    have it finish its round and exit."""

    def __init__(self, parts: Parts, interval: float) -> None:
        ours, theirs = socket.socketpair()
        src = str(Path(apply.__file__).resolve().parents[2])  # where ``postwarden`` lives
        path = os.environ.get("PYTHONPATH")
        env = os.environ | {"PYTHONPATH": src + (os.pathsep + path if path else "")}
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env=env,
            )
        url = parts.engine.url.render_as_string(hide_password=False)
        level = logging.getLogger("postwarden").getEffectiveLevel()
        start = pickle.dumps((url, parts.settings, parts.secret, interval, level))
        with contextlib.suppress(OSError):  # a worker that died at once is seen by alive()
            ours.sendall(_LENGTH.pack(len(start)) + start)
        ours.setblocking(False)
        self._socket = ours

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # already woken, or gone
            self._socket.send(b"w")

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker: it ends after its current round (killed after ``timeout``)."""
        self._socket.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("the inbound worker did not stop within %.0f s; killing it", timeout)
            self.process.kill()
            self.process.wait()


async def run(
    parts: Parts, stop: asyncio.Event, wake: asyncio.Event, *, interval: float = 0.2
) -> None:
    """Apply stored mails until ``stop`` is set, in a worker process: soon after ``wake`` is
    set (the server sets it after storing a mail), and every ``interval`` seconds.

    One worker is kept running, passed each ``wake``; a worker that
    ends is replaced (the mails it had claimed are claimed again after
    :data:`inbound_queue.CLAIM_TIMEOUT`; those stored meanwhile wait for the next one)."""
    while not stop.is_set():
        try:
            worker = await asyncio.to_thread(Worker, parts, interval)
        except Exception:
            log.exception("cannot start the inbound worker process")
        else:
            try:
                while not stop.is_set() and worker.alive():
                    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, wake)]
                    await asyncio.wait(
                        waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED
                    )
                    for waiter in waiters:
                        waiter.cancel()
                    if wake.is_set() and not stop.is_set():
                        wake.clear()
                        worker.wake()
                        # The worker gathers for as long before its round: the wakes of
                        # that time would change nothing.
                        await asyncio.sleep(min(apply.GATHER, interval))
            finally:
                await asyncio.to_thread(worker.close)
            if stop.is_set():
                return
            log.error("the inbound worker exited (%s); starting another", worker.process.returncode)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RESTART_DELAY)


def _receive(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the server closed the socket")
        data += chunk
    return bytes(data)


def _receive_start(sock: socket.socket) -> tuple[str, Settings, bytes, float, int]:
    (size,) = _LENGTH.unpack(_receive(sock, _LENGTH.size))
    start: tuple[str, Settings, bytes, float, int] = pickle.loads(_receive(sock, size))
    return start


def _serve(fd: int) -> None:
    """The worker: apply what is pending, then wait for a wake (or ``interval``), until the
    server closes the socket."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the server, which ends us
    with socket.socket(fileno=fd) as sock:
        try:
            url, settings, secret, interval, level = _receive_start(sock)
        except (OSError, EOFError):
            return  # the server went away before it said what to do
        logging.basicConfig(
            format="%(asctime)s %(levelname)s %(name)s (inbound worker): %(message)s"
        )
        logging.getLogger("postwarden").setLevel(level)
        parts = Parts(settings, db.connect(url), secret)
        gc.freeze()  # what start-up made lives as long as the process (see InboundServer)
        while True:
            try:
                done = apply.process_pending(parts, apply.BATCH)
            except Exception:
                log.exception("inbound round failed; retrying")
                done = 0
            if done >= apply.BATCH:
                continue  # a full batch: more are waiting
            if select.select([sock], [], [], interval)[0]:
                if not sock.recv(4096):
                    return  # the server closed the socket: stop
                time.sleep(min(apply.GATHER, interval))


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
