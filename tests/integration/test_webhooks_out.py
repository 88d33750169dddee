"""Webhooks out: written with the event, signed (Standard Webhooks), delivered at least once to a
real receiver on loopback that fails on purpose, retried with backoff, dead-lettered, replayed,
and an endpoint that keeps failing disabled. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from standardwebhooks.webhooks import Webhook

from postwarden.domain import clock
from postwarden.domain.status import Kind
from postwarden.intake import accept, schemas
from postwarden.outbound.webhooks import sender as sender_mod
from postwarden.settings import Settings
from postwarden.store import accounts, recorder, suppression, webhooks
from postwarden.store import tables as t
from postwarden.testing.receiver import Receiver, closed_port

POLICY = suppression.Policy()


def fast(settings: Settings, **webhooks_settings: Any) -> Settings:
    """The test settings with a quick sender that may reach loopback receivers."""
    conf = {
        "timeout": 1.0,
        "min_backoff": 0.05,
        "max_backoff": 0.2,
        "poll_interval": 0.05,
        **webhooks_settings,
    }
    return settings.model_copy(
        update={
            "webhooks": settings.webhooks.model_copy(update=conf),
            "http": settings.http.model_copy(update={"allow_private": True}),
        }
    )


def send(engine: Engine, account: accounts.Account, to: str, **more: Any) -> int:
    body = schemas.MessageIn.model_validate(
        {"from": "app@acme.test", "to": to, "subject": "s", "text": "t", **more}
    )
    with engine.begin() as conn:
        return accept.submit_message(conn, account, body, accept.Limits(10**7, 10**5)).id


def record(engine: Engine, *facts: recorder.Fact) -> None:
    with engine.begin() as conn:
        recorder.record(conn, list(facts), policy=POLICY)


def endpoint(engine: Engine, account: accounts.Account, url: str, *types: str) -> Any:
    with engine.begin() as conn:
        return webhooks.create_endpoint(conn, account.id, url, event_types=types)


def deliveries(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(t.webhook_deliveries).order_by(t.webhook_deliveries.c.id)))


async def drain(sender: sender_mod.Sender, engine: Engine, timeout: float = 20.0) -> None:
    """Run the sender until nothing is pending."""
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            states = {r.state for r in deliveries(engine)}
            if webhooks.PENDING not in states:
                break
    finally:
        stop.set()
        await task
    assert webhooks.PENDING not in {r.state for r in deliveries(engine)}


def test_no_endpoint_no_outbox_row(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    mid = send(engine, account, "a@example.test")
    record(engine, recorder.Fact(mid, Kind.DELIVERED, "smtp"))
    assert deliveries(engine) == []


def test_the_outbox_row_is_written_with_the_event_and_rolled_back_with_it(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    endpoint(engine, account, "http://127.0.0.1:9/ok")
    mid = send(engine, account, "a@example.test", metadata={"order": 42})
    with pytest.raises(RuntimeError), engine.begin() as conn:
        recorder.record(conn, [recorder.Fact(mid, Kind.DELIVERED, "smtp")], policy=POLICY)
        assert len(list(conn.execute(select(t.webhook_deliveries)))) == 1
        raise RuntimeError("crash before commit")
    assert deliveries(engine) == []
    record(engine, recorder.Fact(mid, Kind.DELIVERED, "smtp", code="2.0.0"))
    (row,) = deliveries(engine)
    body = json.loads(row.payload)
    assert body["type"] == webhooks.STATUS_CHANGED
    data = body["data"]
    assert (data["previous_status"], data["status"], data["channel"]) == (
        "pending",
        "delivered",
        "email",
    )
    assert data["metadata"] == {"order": 42} and data["code"] == "2.0.0"


def test_event_types_follow_the_facts(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    endpoint(engine, account, "http://127.0.0.1:9/all")
    only = endpoint(engine, account, "http://127.0.0.1:9/bad", webhooks.BOUNCED_AFTER_DELIVERY)
    mid = send(engine, account, "gone@example.test")
    record(
        engine,
        recorder.Fact(mid, Kind.DELIVERED, "smtp"),
        recorder.Fact(mid, Kind.OPENED, "tracking", data={"machine": True}, dedupe_key="o1"),
        recorder.Fact(mid, Kind.OPENED, "tracking", data={"machine": True}, dedupe_key="o1"),
        recorder.Fact(
            mid, Kind.BOUNCED, "dsn", reason="userunknown", hard=True, code="5.1.1", dedupe_key="b"
        ),
    )
    rows = deliveries(engine)
    mine = [r.event_type for r in rows if r.endpoint_id != only.id]
    assert mine == [
        webhooks.STATUS_CHANGED,
        webhooks.STATUS_CHANGED,
        webhooks.OPENED,  # once: the second open was a duplicate
        webhooks.BOUNCED_AFTER_DELIVERY,
        webhooks.SUPPRESSION_ADDED,
    ]
    assert [r.event_type for r in rows if r.endpoint_id == only.id] == [
        webhooks.BOUNCED_AFTER_DELIVERY
    ]
    opened = json.loads(next(r.payload for r in rows if r.event_type == webhooks.OPENED))
    assert opened["data"]["machine"] is True
    late = json.loads(
        next(r.payload for r in rows if r.event_type == webhooks.BOUNCED_AFTER_DELIVERY)
    )
    assert (late["data"]["status"], late["data"]["hard"], late["data"]["reason"]) == (
        "opened",
        True,
        "userunknown",
    )
    with engine.begin() as conn:
        suppression.remove(conn, account.id, "gone@example.test", actor="ops@acme.test")
    assert deliveries(engine)[-1].event_type == webhooks.SUPPRESSION_REMOVED


async def test_every_event_arrives_signed_through_failures(
    engine: Engine, settings: Settings, account_key: tuple[accounts.Account, str]
) -> None:
    """500s, a dropped connection, a slow answer, a refused connection and a hang: each
    endpoint gets all its webhooks in the end (the refused and hung ones become dead letters),
    signed under its secret, with the same webhook-id on every try."""
    account = account_key[0]
    settings = fast(settings, timeout=0.5)
    receiver = Receiver()
    await receiver.start()
    try:
        flaky = endpoint(engine, account, receiver.url("/fail/2/x"))
        slow = endpoint(engine, account, receiver.url("/slow/0.2/x"))
        refused = endpoint(engine, account, f"http://127.0.0.1:{closed_port()}/x")
        ids = [send(engine, account, f"u{i}@example.test") for i in range(5)]
        record(engine, *(recorder.Fact(mid, Kind.DELIVERED, "smtp") for mid in ids))
        settings = settings.model_copy(
            update={"webhooks": settings.webhooks.model_copy(update={"retry_for": 1.5})}
        )
        sender = sender_mod.Sender(engine, settings)
        await drain(sender, engine)
    finally:
        await receiver.stop()
    rows = deliveries(engine)
    by_endpoint = {e.id: [r for r in rows if r.endpoint_id == e.id] for e in (flaky, slow, refused)}
    assert {r.state for r in by_endpoint[flaky.id] + by_endpoint[slow.id]} == {"delivered"}
    assert {r.state for r in by_endpoint[refused.id]} == {"failed"}
    assert all(r.attempts == 3 for r in by_endpoint[flaky.id])
    for e, prefix in ((flaky, "/fail/"), (slow, "/slow/")):
        got = receiver.delivered(prefix)
        assert sorted(r.headers["webhook-id"] for r in got) == sorted(
            r.webhook_id for r in by_endpoint[e.id]
        )
        for r in got:
            Webhook(e.secret).verify(r.body, r.headers)
    tries = [r for r in receiver.received if r.path.startswith("/fail/")]
    assert len(tries) == 15 and len({r.headers["webhook-id"] for r in tries}) == 5
    with engine.connect() as conn:
        log = webhooks.get_delivery(conn, account.id, by_endpoint[flaky.id][0].id)["attempt_log"]
        failed = webhooks.get_delivery(conn, account.id, by_endpoint[refused.id][0].id)
    assert [a["status_code"] for a in log] == [500, 500, 200]
    assert '"error"' in log[0]["response"] and log[0]["duration_ms"] >= 0
    assert failed["attempt_log"][0]["status_code"] is None
    assert "Connect" in failed["attempt_log"][0]["error"]


async def test_a_dead_endpoint_does_not_delay_the_others(
    engine: Engine, settings: Settings, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    settings = fast(settings, timeout=2.0, concurrency=2, retry_for=0.1)
    receiver = Receiver()
    await receiver.start()
    try:
        endpoint(engine, account, receiver.url("/hang"))
        live = endpoint(engine, account, receiver.url("/ok"))
        ids = [send(engine, account, f"u{i}@example.test") for i in range(20)]
        record(engine, *(recorder.Fact(mid, Kind.DELIVERED, "smtp") for mid in ids))
        sender = sender_mod.Sender(engine, settings)
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        t0 = time.monotonic()
        while len(receiver.delivered("/ok")) < 20 and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.02)
        took = time.monotonic() - t0
        stop.set()
        await task
    finally:
        await receiver.stop()
    assert len(receiver.delivered("/ok")) == 20
    # Hanging requests take 2 s each, two at a time: the live endpoint was served meanwhile.
    assert took < 2.0, took
    assert live.id


async def test_secret_rotation_signs_with_both_during_the_overlap(
    engine: Engine, settings: Settings, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    settings = fast(settings)
    receiver = Receiver()
    await receiver.start()
    try:
        first = endpoint(engine, account, receiver.url("/ok"))
        with engine.begin() as conn:
            second = webhooks.rotate_secret(conn, account.id, first.id, overlap=timedelta(hours=1))
        record(engine, recorder.Fact(send(engine, account, "a@example.test"), Kind.DELIVERED, "x"))
        await drain(sender_mod.Sender(engine, settings), engine)
        with engine.begin() as conn:
            webhooks.rotate_secret(conn, account.id, first.id, overlap=timedelta(0))
            third = webhooks.get_endpoint(conn, account.id, first.id)
        record(engine, recorder.Fact(send(engine, account, "b@example.test"), Kind.DELIVERED, "x"))
        await drain(sender_mod.Sender(engine, settings), engine)
    finally:
        await receiver.stop()
    during, after = receiver.delivered()
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    Webhook(first.secret).verify(during.body, during.headers)
    Webhook(second.secret).verify(during.body, during.headers)
    Webhook(third.secret).verify(after.body, after.headers)
    with pytest.raises(Exception, match="signature"):
        Webhook(second.secret).verify(after.body, after.headers)


async def test_an_endpoint_that_keeps_failing_is_disabled_and_replay_brings_it_back(
    engine: Engine, settings: Settings, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    settings = fast(settings, disable_after=0.3, disable_failures=3, retry_for=60)
    receiver = Receiver()
    await receiver.start()
    try:
        failing = endpoint(engine, account, receiver.url("/error"))
        ids = [send(engine, account, f"u{i}@example.test") for i in range(3)]
        record(engine, *(recorder.Fact(mid, Kind.DELIVERED, "smtp") for mid in ids))
        await drain(sender_mod.Sender(engine, settings), engine)
        with engine.begin() as conn:
            disabled = webhooks.disabled_endpoints(conn, account.id)
            assert [e.id for e in disabled] == [failing.id]
            assert "every attempt failed since" in (disabled[0].disabled_reason or "")
            dead = webhooks.list_deliveries(conn, account.id, state="failed")
        assert len(dead) == 3
        # While disabled, new events are kept as dead letters for a later replay.
        record(engine, recorder.Fact(send(engine, account, "x@example.test"), Kind.BOUNCED, "x"))
        assert deliveries(engine)[-1].state == "failed"
        with engine.begin() as conn:
            webhooks.update_endpoint(
                conn, account.id, failing.id, url=receiver.url("/ok"), enabled=True
            )
            one = webhooks.replay(conn, account.id, dead[0]["id"])
            assert one is None
        await drain(sender_mod.Sender(engine, settings), engine)
        assert len(receiver.delivered("/ok")) == 1
        with engine.begin() as conn:
            n = webhooks.replay_range(
                conn,
                account.id,
                since=clock.now() - timedelta(minutes=5),
                until=clock.now() + timedelta(minutes=1),
            )
        assert n == 3
        await drain(sender_mod.Sender(engine, settings), engine)
    finally:
        await receiver.stop()
    assert {r.state for r in deliveries(engine)} == {"delivered"}
    replayed = receiver.delivered("/ok")
    assert len(replayed) == 4
    first_ids = {r.headers["webhook-id"] for r in receiver.received if r.path == "/error"}
    assert first_ids <= {r.headers["webhook-id"] for r in replayed}
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(t.webhook_attempts)) > 4
