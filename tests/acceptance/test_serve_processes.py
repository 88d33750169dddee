"""``postwarden serve --api-processes N`` as an operator runs it: N processes answer the API on
one port, the main process delivers what any of them accepted (woken at once, not by polling),
and the service stops, exiting non-zero, when one of them dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from postwarden.store import accounts, db


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Recorder:
    def __init__(self) -> None:
        self.recipients: list[str] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.recipients.extend(envelope.rcpt_tos)
        return "250 OK"


@pytest.fixture
def sink() -> Iterator[tuple[_Recorder, int]]:
    recorder = _Recorder()
    port = _free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    yield recorder, port
    controller.stop()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
    return found


def test_api_processes_share_the_port_and_wake_the_dispatcher(
    tmp_path: Path, sink: tuple[_Recorder, int]
) -> None:
    recorder, sink_port = sink
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    engine = db.connect(url)
    db.migrate(engine)
    with engine.begin() as conn:
        _, key = accounts.create(conn, "acme", "bounces.acme.test")
    engine.dispose()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWARDEN_")} | {
        "POSTWARDEN_DATABASE_URL": url,
        "POSTWARDEN_SECRET_KEY": "test-secret",
        "POSTWARDEN_SMTP_ROUTES": f"example.test=127.0.0.1:{sink_port}",
        "POSTWARDEN_INBOUND_PORT": str(_free_port()),
        "POSTWARDEN_POLL_INTERVAL": "60",  # only a wake-up can make it deliver in time
    }
    command = [sys.executable, "-c", "from postwarden.cli import app; app()"]
    proc = subprocess.Popen(
        [*command, "serve", "--port", str(port), "--api-processes", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.1)
            time.sleep(1)  # let the second process listen too
            assert len(_children(proc.pid)) == 2
            # new connections each time: the kernel spreads them over both processes
            ids = []
            for i in range(30):
                response = httpx.post(
                    f"http://127.0.0.1:{port}/v1/messages",
                    json={"from": "app@acme.test", "to": f"u{i}@example.test", "subject": "Hi"}
                    | {"text": "Hello"},
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
            assert len(set(ids)) == 30
            deadline = time.monotonic() + 15
            while len(recorder.recipients) < 30 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert sorted(recorder.recipients) == sorted(f"u{i}@example.test" for i in range(30))
            log = client.get(
                "/v1/messages", params={"limit": 100}, headers={"Authorization": f"Bearer {key}"}
            ).json()
            assert {m["status"] for m in log["items"]} == {"delivered"}

        victim = _children(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert f"exited with code -{signal.SIGKILL.value}; stopped" in output
