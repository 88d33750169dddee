"""Webhooks out as a person runs them: the CLI adds the endpoint, ``postwarden worker`` sends,
and ``kill -9`` of the worker in the middle of its retries loses nothing: a second worker
delivers every webhook once the first one's leases end, with the webhook-ids it began with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from postwarden.domain.status import Kind
from postwarden.intake import accept, schemas
from postwarden.store import accounts, db, recorder, suppression
from postwarden.store import tables as t
from postwarden.testing import receiver

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWARDEN_")}
    return env | {
        "POSTWARDEN_DATABASE_URL": f"sqlite:///{tmp_path / 'hooks.db'}",
        "POSTWARDEN_SECRET_KEY": "process-test",
        "COLUMNS": "200",
        **more,
    }


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from postwarden.cli import app; app()", *args],
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


@pytest.fixture
def hooks() -> Iterator[receiver.Receiver]:
    with receiver.in_thread() as server:
        yield server


WORKER_ENV = {
    "POSTWARDEN_HTTP_ALLOW_PRIVATE": "1",
    "POSTWARDEN_WEBHOOKS_TIMEOUT": "0.5",
    "POSTWARDEN_WEBHOOKS_MIN_BACKOFF": "0.3",
    "POSTWARDEN_WEBHOOKS_MAX_BACKOFF": "0.6",
    "POSTWARDEN_WEBHOOKS_POLL_INTERVAL": "0.05",
    "POSTWARDEN_POLL_INTERVAL": "0.2",
}


def test_kill_9_mid_retry_loses_nothing(tmp_path: Path, hooks: receiver.Receiver) -> None:
    assert _cli(tmp_path, "account", "create", "acme").returncode == 0
    url = hooks.url("/fail/2/acme")
    refused = _cli(tmp_path, "webhooks", "add", url)
    assert refused.returncode == 1 and "loopback" in refused.stderr
    added = _cli(
        tmp_path, "webhooks", "add", url, "--event", "message.status_changed", **WORKER_ENV
    )
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip().splitlines()[-1]
    assert secret.startswith("whsec_")

    engine = db.connect(f"sqlite:///{tmp_path / 'hooks.db'}")
    with engine.begin() as conn:
        account = accounts.by_name(conn, "acme")
        ids = []
        for i in range(40):
            body = schemas.MessageIn.model_validate(
                {"from": "a@acme.test", "to": f"u{i}@example.test", "subject": "s", "text": "t"}
            )
            ids.append(accept.submit_message(conn, account, body, accept.Limits(10**7, 10**5)).id)
        recorder.record(
            conn,
            [recorder.Fact(mid, Kind.DELIVERED, "smtp") for mid in ids],
            policy=suppression.Policy(),
        )
        webhook_ids = set(conn.scalars(select(t.webhook_deliveries.c.webhook_id)))
    assert len(webhook_ids) == 40

    log = open(tmp_path / "worker1.log", "w")
    first = subprocess.Popen(
        [sys.executable, "-c", "from postwarden.cli import app; app()", "worker"],
        env=_env(tmp_path, **WORKER_ENV),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        # Killed once it is retrying: every webhook tried, none or few delivered yet.
        while time.monotonic() < deadline:
            tried = {r.headers.get("webhook-id") for r in hooks.received}
            if len(tried) == 40:
                break
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    delivered_before = {r.headers["webhook-id"] for r in hooks.delivered()}
    assert len(delivered_before) < 40, "killed too late to prove anything"
    with engine.connect() as conn:
        states = list(conn.scalars(select(t.webhook_deliveries.c.state)))
    assert states.count("pending") == 40 - states.count("delivered")

    second = subprocess.Popen(
        [sys.executable, "-c", "from postwarden.cli import app; app()", "worker"],
        env=_env(tmp_path, **WORKER_ENV),
        cwd=tmp_path,
        stdout=open(tmp_path / "worker2.log", "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60  # the first worker's leases end (3 x timeout + 10 s)
        while time.monotonic() < deadline:
            if {r.headers["webhook-id"] for r in hooks.delivered()} == webhook_ids:
                break
            time.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(20)
    assert {r.headers["webhook-id"] for r in hooks.delivered()} == webhook_ids
    for r in hooks.delivered():
        Webhook(secret).verify(r.body, r.headers)
    with engine.connect() as conn:
        assert set(conn.scalars(select(t.webhook_deliveries.c.state))) == {"delivered"}
    engine.dispose()

    listed = _cli(tmp_path, "webhooks", "list")
    assert listed.returncode == 0 and "40" in listed.stdout
