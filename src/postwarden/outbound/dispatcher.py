"""The dispatcher: claim due messages, have their channel build and send them, record verdicts.

Per channel (one lane each, keyed by ``messages.channel``): queue.claim_batch -> channel.build
(once per message; a message that cannot be built is a verdict of its own) -> channel.send ->
verdicts turned into facts -> recorder.record (status machine, events, suppression), with one
attempt row per attempt. The dispatcher judges nothing about SMTP or SMS: verdicts arrive
classified. Database work runs in threads so the event loop keeps serving the connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from postwarden.domain import clock
from postwarden.domain.status import Kind
from postwarden.outbound.channels import base
from postwarden.settings import Settings
from postwarden.store import db, outbox, queue, recorder, suppression

log = logging.getLogger(__name__)

WAKE_GATHER = 0.05
"""Seconds the dispatcher waits after a wake before claiming, to batch a stream of arrivals."""

_KINDS = {
    "sent": Kind.RELAYED,
    "delivered": Kind.DELIVERED,
    "bounced": Kind.BOUNCED,
    "failed": Kind.FAILED,
}

Built = tuple[list[queue.Claimed], list[base.Outgoing[Any]], list[base.Verdict]]
"""A claimed batch: the claims, what was built to send, and the verdicts of what could not be."""


class Wake:
    """What intake sets after accepting messages: wakes every lane (its own event each, so
    that one lane clearing its event does not swallow another's wake-up)."""

    def __init__(self, events: Sequence[asyncio.Event]) -> None:
        self._events = events

    def set(self) -> None:
        for event in self._events:
            event.set()

    def is_set(self) -> bool:
        return all(event.is_set() for event in self._events)


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        channels: Mapping[str, base.Channel],
        *,
        owner: str | None = None,
    ) -> None:
        owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        policy = suppression.Policy(settings.soft_bounce_limit, settings.soft_bounce_days)
        self.lanes = [
            _Lane(engine, settings, name, channel, owner, policy)
            for name, channel in channels.items()
        ]
        self.wake = Wake([lane.wake for lane in self.lanes])

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, every channel at once (see :meth:`_Lane.run`)."""
        await asyncio.gather(*(lane.run(stop) for lane in self.lanes))

    async def run_once(self) -> int:
        """One batch per channel, sent and recorded; return how many messages were claimed."""
        return sum(await asyncio.gather(*(lane.run_once() for lane in self.lanes)))

    async def aclose(self) -> None:
        """Close the channels (once the dispatcher is done with them)."""
        for lane in self.lanes:
            await lane.channel.aclose()


class _Lane:
    """One channel's pipeline: its claims, its builds, its sends, its records."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        name: str,
        channel: base.Channel,
        owner: str,
        policy: suppression.Policy,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.name = name
        self.channel = channel
        self.owner = owner
        self.policy = policy
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; sleep when nothing is due (``wake`` cuts the sleep).

        Batches are pipelined so the database and the network overlap: while one batch is on
        the wire, the next one is claimed and built and the previous one is recorded (each in
        a thread). At most three batches are in hand at once: one recording, one sending, one
        claimed ahead. On stop, a batch claimed ahead is given back untouched."""
        claiming: asyncio.Future[Built] | None = None
        recording: asyncio.Future[None] | None = None
        try:
            while not stop.is_set():
                try:
                    if claiming is None:
                        self.wake.clear()  # what is accepted from now on wakes us again
                        claiming = asyncio.ensure_future(asyncio.to_thread(self._claim_and_build))
                    claimed, outgoing, unbuilt = await claiming
                    claiming = None
                    if claimed:
                        # Claim ahead only when this batch was full: a short batch means the
                        # queue is (nearly) drained, and claiming ahead would take messages
                        # that newly arrive away from other workers for a whole send.
                        full = len(claimed) >= self.settings.batch_size
                        if full:
                            self.wake.clear()
                            claiming = asyncio.ensure_future(
                                asyncio.to_thread(self._claim_and_build)
                            )
                        verdicts = await self._send(outgoing)
                        if recording is not None:
                            await recording
                        recording = asyncio.ensure_future(
                            asyncio.to_thread(
                                self._record, claimed, outgoing, [*unbuilt, *verdicts]
                            )
                        )
                        if full:
                            continue
                        # A short batch drained the queue: record it, then wait for a wake
                        # (or the poll) instead of claiming again at once, so a stream of
                        # single messages is claimed in batches, not one round per message.
                        await recording
                        recording = None
                    elif recording is not None:
                        await recording
                        recording = None
                        continue
                except Exception:
                    log.exception("%s dispatch round failed; retrying", self.name)
                    claiming = None
                    if recording is not None:
                        await asyncio.gather(recording, return_exceptions=True)
                        recording = None
                    await asyncio.sleep(self.settings.poll_interval)
                    continue
                waiters = [
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(self.wake.wait()),
                ]
                await asyncio.wait(
                    waiters,
                    timeout=self.settings.poll_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for waiter in waiters:
                    waiter.cancel()
                if self.wake.is_set() and not stop.is_set():
                    # Woken by intake: gather what else arrives for a moment, so a stream of
                    # single messages is claimed in batches, not one claim per message.
                    await asyncio.sleep(min(WAKE_GATHER, self.settings.poll_interval))
        finally:
            if recording is not None:
                await asyncio.gather(recording, return_exceptions=True)
            if claiming is not None:
                ahead = await asyncio.gather(claiming, return_exceptions=True)
                if isinstance(ahead[0], tuple) and ahead[0][0]:
                    await asyncio.to_thread(self._release, [c.id for c in ahead[0][0]])

    async def run_once(self) -> int:
        claimed, outgoing, unbuilt = await asyncio.to_thread(self._claim_and_build)
        if not claimed:
            return 0
        verdicts = await self._send(outgoing)
        await asyncio.to_thread(self._record, claimed, outgoing, [*unbuilt, *verdicts])
        return len(claimed)

    async def _send(self, outgoing: Sequence[base.Outgoing[Any]]) -> list[base.Verdict]:
        return await self.channel.send(outgoing) if outgoing else []

    def _release(self, ids: list[int]) -> None:
        """Give back messages claimed ahead and never sent (their attempt did not happen)."""
        with self.engine.begin() as conn:
            queue.release(conn, self.owner, ids, clock.now())

    # -- database side (threads) ---------------------------------------------------------

    def _claim_and_build(self) -> Built:
        # The write transaction only claims: reading what the batch needs and building it
        # happen after it, so the SQLite write lock is free for the previous batch's record.
        with self.engine.begin() as conn:
            claimed = queue.claim_batch(
                conn,
                channel=self.name,
                owner=self.owner,
                limit=self.settings.batch_size,
                lease=timedelta(seconds=self.settings.lease_seconds),
                now=clock.now(),
            )
        if not claimed:
            return [], [], []
        with db.reader(self.engine).connect() as conn:
            built = self.channel.build(conn, claimed)
        outgoing: list[base.Outgoing[Any]] = []
        unbuilt: list[base.Verdict] = []
        for item in built:
            if isinstance(item, base.Verdict):
                unbuilt.append(item)
            else:
                outgoing.append(item)
        return claimed, outgoing, unbuilt

    def _record(
        self,
        claimed: Sequence[queue.Claimed],
        outgoing: Sequence[base.Outgoing[Any]],
        verdicts: Sequence[base.Verdict],
    ) -> None:
        now = clock.now()
        by_id = {c.id: c for c in claimed}
        keep_of = {o.message_id: o.keep for o in outgoing if o.keep is not None}
        facts: list[recorder.Fact] = []
        extra: dict[int, dict[str, Any]] = {}
        attempts: list[outbox.Attempt] = []
        keep: dict[int, bytes] = {}
        for v in verdicts:  # built before the transaction: its lock is held less long
            c = by_id.get(v.message_id)
            if c is None:
                log.error("%s channel judged message %d, not in its batch", self.name, v.message_id)
                continue
            fact, next_at = self._fact(c, v, now)
            facts.append(fact)
            columns: dict[str, Any] = {
                "lease_until": None,
                "lease_owner": None,
                "next_attempt_at": next_at,
            }
            if v.provider_message_id and len(v.provider_message_id) <= base.PROVIDER_ID_MAX:
                columns["provider_message_id"] = v.provider_message_id
            extra[c.id] = columns
            if next_at is not None and c.id in keep_of:
                keep[c.id] = keep_of[c.id]
            ev = v.evidence
            if ev is not None:
                attempts.append(
                    outbox.Attempt(
                        c.id,
                        c.attempts,
                        ev.started_at,
                        ev.duration_ms,
                        ev.via,
                        ev.remote,
                        v.outcome,
                        v.reply_code,
                        v.code,
                        v.detail,
                        ev.transcript,
                    )
                )
        if len(facts) < len(claimed):  # left to their lease, claimed again when it ends
            log.error(
                "%s channel gave no verdict on %d messages", self.name, len(claimed) - len(facts)
            )
        with self.engine.begin() as conn:
            outbox.add_attempts(conn, attempts)
            outbox.keep_bodies(conn, keep)
            recorder.record(conn, facts, policy=self.policy, extra=extra)

    def _fact(
        self, c: queue.Claimed, v: base.Verdict, now: datetime
    ) -> tuple[recorder.Fact, datetime | None]:
        """Turn one verdict into a fact, and the time of the next attempt if any."""
        ev = v.evidence
        data: dict[str, Any] = {"attempt": c.attempts}
        if ev is not None:
            data |= {"remote": ev.remote, "via": ev.via}
        common = {
            "source": self.channel.source,
            "occurred_at": now,
            "data": data,
            "dedupe_key": f"attempt:{c.attempts}",
            "detail": v.detail,
            "code": v.code,
        }
        if v.outcome != "deferred":
            kind = _KINDS[v.outcome]
            return recorder.Fact(c.id, kind, reason=v.reason, hard=v.hard, **common), None
        delay = queue.backoff(
            c.attempts,
            minimum=self.settings.min_backoff,
            maximum=self.settings.max_backoff,
            retry_after=v.retry_after,
        )
        if (now + delay - c.created_at).total_seconds() > self.settings.max_lifetime:
            # Retries ran out: the reason says so; the last attempt's words stay the detail.
            return recorder.Fact(c.id, Kind.EXPIRED, reason="expired", hard=False, **common), None
        return recorder.Fact(
            c.id, Kind.DEFERRED, reason=v.reason, hard=False, **common
        ), now + delay
