"""The bounce parser in a process of its own.

``dsn.parse`` is pure CPU, and the inbound server's process also speaks SMTP and records under
one GIL, so batches are parsed in a child process. The child is started as
``python -m postwarden.inbound.parsing``, not by multiprocessing's spawn: spawn re-runs the
parent's main script in the child, which for ``postwarden inbound`` imports the whole CLI and
web app, about a second of CPU taken from the server just as the first bounces arrive. This
one imports the parser alone. Batches go both ways as length-prefixed pickles over a socket.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

from postwarden.inbound import dsn

__all__ = ["Parser", "parse_each"]

_LENGTH = struct.Struct("!Q")


def parse_each(raws: list[bytes]) -> list[dsn.Report | BaseException]:
    """Parse each mail; a fault is returned in its place, so it marks only that mail."""
    out: list[dsn.Report | BaseException] = []
    for raw in raws:
        try:
            out.append(dsn.parse(raw))  # pure; kept out of any transaction
        except Exception as exc:
            out.append(exc)
    return out


def _send(stream: BinaryIO, value: object) -> None:
    data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: BinaryIO) -> object:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("the other end closed the connection")
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other end closed the connection mid-message")
    return pickle.loads(data)


class Parser:
    """A child process parsing batches of raw mails, one batch at a time (not thread-safe:
    the caller serialises its use). It ends when this side closes, or exits."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        src = str(Path(dsn.__file__).resolve().parents[2])  # where ``postwarden`` lives
        path = os.environ.get("PYTHONPATH")
        env = os.environ | {"PYTHONPATH": src + (os.pathsep + path if path else "")}
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
            )
        self._socket = ours
        self._stream = ours.makefile("rwb")

    def parse(self, raws: list[bytes]) -> list[dsn.Report | BaseException]:
        """:func:`parse_each` in the child; raises if the child is gone (then close this)."""
        _send(self._stream, raws)
        reports = _receive(self._stream)
        assert isinstance(reports, list)
        return reports

    def close(self) -> None:
        with contextlib.suppress(OSError):  # flushing what a dead child will never read
            self._stream.close()
        self._socket.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _serve(fd: int) -> None:
    """The child: answer each batch with its reports until the parent closes the socket."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which ends us
    with socket.socket(fileno=fd) as sock, sock.makefile("rwb") as stream:
        while True:
            try:
                raws = _receive(stream)
            except EOFError:
                return
            assert isinstance(raws, list)
            reports = parse_each(raws)
            for i, report in enumerate(reports):
                if isinstance(report, BaseException):
                    try:
                        pickle.dumps(report)
                    except Exception:
                        reports[i] = RuntimeError(f"{type(report).__name__}: {report}")
            _send(stream, reports)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
