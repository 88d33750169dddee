"""Webhooks: deliveries per second to a loopback receiver (in a process of its own), with and
without one dead endpoint beside the live ones, next to plain httpx posting to the same
receiver at the same concurrency (the limit); and provider events accepted per second (signed
Mailgun events, one per request, through the app) next to POST /v1/messages through the same
client (the API's own rate)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench import common

LIVE = 3


def _receiver(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "postwarden.testing.receiver", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    common.wait_port(port)
    return proc


def _settings(url: str, timeout: float) -> Any:
    from postwarden.settings import Settings

    return Settings(
        database_url=url,
        secret_key=common.SECRET,
        webhooks={"timeout": timeout, "poll_interval": 0.02, "batch_size": 500},
        http={"allow_private": True},
    )


def _seed(url: str, n: int, port: int, dead: bool) -> tuple[Any, set[int]]:
    """``n`` delivered messages, each a webhook to ``LIVE`` live endpoints (and a dead one)."""
    from postwarden.domain.status import Kind
    from postwarden.store import recorder, suppression, webhooks

    engine, account, _key = common.prepare(url)
    with engine.begin() as conn:
        live = {
            webhooks.create_endpoint(conn, account.id, f"http://127.0.0.1:{port}/ok/{i}").id
            for i in range(LIVE)
        }
        if dead:
            webhooks.create_endpoint(conn, account.id, f"http://127.0.0.1:{port}/hang")
    common.seed_pending(engine, account, n)
    with engine.begin() as conn:
        ids = list(conn.scalars(text("SELECT id FROM messages")))
        recorder.record(
            conn,
            [recorder.Fact(mid, Kind.DELIVERED, "smtp") for mid in ids],
            policy=suppression.Policy(),
        )
    return engine, live


def _delivered(engine: Any, live: set[int]) -> int:
    from sqlalchemy import func, select

    from postwarden.store import tables as t

    d = t.webhook_deliveries
    with engine.connect() as conn:
        return int(
            conn.scalar(
                select(func.count()).where(d.c.state == "delivered", d.c.endpoint_id.in_(live))
            )
            or 0
        )


def _send_all(url: str, n: int, port: int, dead: bool) -> float:
    """Webhooks per second delivered to the live endpoints."""
    from postwarden.outbound.webhooks.sender import Sender

    engine, live = _seed(url, n, port, dead)
    want = n * LIVE

    async def run() -> float:
        sender = Sender(engine, _settings(url, timeout=1.0))
        stop = asyncio.Event()
        t0 = time.perf_counter()
        task = asyncio.create_task(sender.run(stop))
        while await asyncio.to_thread(_delivered, engine, live) < want:
            await asyncio.sleep(0.05)
            if time.perf_counter() - t0 > max(60.0, n / 20):
                raise TimeoutError("the live endpoints did not get every webhook")
        took = time.perf_counter() - t0
        stop.set()
        await task
        return want / took

    try:
        return asyncio.run(run())
    finally:
        engine.dispose()


def _httpx_limit(port: int, n: int, concurrency: int) -> float:
    """Plain httpx POSTs of a similar body, ``concurrency`` at a time per endpoint."""
    import httpx

    body = json.dumps({"type": "message.status_changed", "data": {"message_id": 1}}).encode()

    async def run() -> float:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=LIVE * concurrency)) as c:
            sem = asyncio.Semaphore(LIVE * concurrency)

            async def one(i: int) -> None:
                async with sem:
                    await c.post(f"http://127.0.0.1:{port}/ok/{i % LIVE}", content=body)

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n * LIVE)))
            return n * LIVE / (time.perf_counter() - t0)

    return asyncio.run(run())


def _provider_events(url: str, seconds: float) -> tuple[float, float]:
    """(Mailgun events accepted per second, POST /v1/messages per second), same client."""
    from fastapi.testclient import TestClient

    from postwarden.store import provider_events
    from postwarden.web.app import create_app

    engine, account, key = common.prepare(url)
    with engine.begin() as conn:
        hook = provider_events.set_hook(conn, account.id, "mailgun", {"signing_key": "k"})
    app = create_app(_settings(url, 1.0), engine, common.SECRET.encode())
    message = {"from": "a@bench.test", "to": f"u@{common.SINK_DOMAIN}", "subject": "s", "text": "t"}
    with TestClient(app) as client:

        def events(i: int) -> dict[str, Any]:
            stamp, token = str(int(time.time())), f"token-{i}"
            sig = hmac.new(b"k", (stamp + token).encode(), hashlib.sha256).hexdigest()
            return {
                "signature": {"timestamp": stamp, "token": token, "signature": sig},
                "event-data": {
                    "id": f"ev-{i}",
                    "event": "delivered",
                    "timestamp": time.time(),
                    "recipient": f"u{i}@{common.SINK_DOMAIN}",
                    "message": {"headers": {"message-id": f"m{i}@x"}},
                },
            }

        def rate(post: Any) -> float:
            count, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                assert post(count).status_code in (200, 202)
                count += 1
            return count / (time.perf_counter() - t0)

        accepted = rate(lambda i: client.post(hook.path, json=events(i)))
        headers = {"Authorization": f"Bearer {key}"}
        intake = rate(lambda i: client.post("/v1/messages", json=message, headers=headers))
    engine.dispose()
    return accepted, intake


def run(report: common.Report, n: int, workdir: Path, seconds: float) -> None:
    port = common.free_port()
    proc = _receiver(port)
    try:
        limit = _httpx_limit(port, n, 4)
        with common.sqlite_db(workdir, "hooks") as url:
            alone = _send_all(url, n, port, dead=False)
        with common.sqlite_db(workdir, "hooks-dead") as url:
            beside = _send_all(url, n, port, dead=True)
    finally:
        proc.kill()
        proc.wait()
    report.add(
        common.Figure(
            "webhook deliveries/s (SQLite, 3 live endpoints)",
            alone,
            "webhooks/s",
            "plain httpx to the same receiver",
            limit,
        )
    )
    report.add(
        common.Figure(
            "webhook deliveries/s to the live endpoints beside a dead one (requests hang)",
            beside,
            "webhooks/s",
            "without the dead endpoint, same run",
            alone,
        )
    )
    with common.sqlite_db(workdir, "provider") as url:
        accepted, intake = _provider_events(url, seconds)
    report.add(
        common.Figure(
            "provider events accepted/s (signed Mailgun events, one per request, SQLite)",
            accepted,
            "events/s",
            "POST /v1/messages through the same client",
            intake,
        )
    )
