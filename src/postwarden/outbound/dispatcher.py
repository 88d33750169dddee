"""The dispatcher: claim due messages, build them, hand them to the channel, record the replies.

claim_batch -> compose (once per message) -> channel.send_many per destination domain ->
classify each reply -> recorder.record (status machine, events, attempts, suppression).
Database work runs in a thread so the event loop keeps serving SMTP conversations.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select

from postwarden.domain import addresses, classify, clock, verp
from postwarden.domain.status import Kind
from postwarden.outbound.channels.base import AttemptResult, Channel, Outgoing
from postwarden.outbound.channels.email import compose
from postwarden.outbound.channels.email import tracking as email_tracking
from postwarden.settings import Settings
from postwarden.store import batch, db, queue, recorder, suppression
from postwarden.store import tables as t

log = logging.getLogger(__name__)

_ATTEMPT_COLUMNS = (
    "message_id",
    "number",
    "started_at",
    "duration_ms",
    "via",
    "remote",
    "outcome",
    "code",
    "enhanced",
    "text",
    "transcript",
)

WAKE_GATHER = 0.05
"""Seconds the dispatcher waits after a wake before claiming, to batch a stream of arrivals."""


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        channel: Channel,
        secret: bytes,
        *,
        owner: str | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.channel = channel
        self.secret = secret
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.policy = suppression.Policy(settings.soft_bounce_limit, settings.soft_bounce_days)
        self.composer = compose.Composer()
        self._contents: dict[int, compose.Content] = {}
        self._bounce_domains: dict[int, str] = {}
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; sleep when nothing is due (``wake`` cuts the sleep).

        Batches are pipelined so the database and the network overlap: while one batch is on
        the wire, the next one is claimed and built and the previous one is recorded (each in
        a thread). At most three batches are in hand at once: one recording, one sending, one
        claimed ahead. On stop, a batch claimed ahead is given back untouched."""
        claiming: asyncio.Future[tuple[list[queue.Claimed], list[Outgoing]]] | None = None
        recording: asyncio.Future[None] | None = None
        try:
            while not stop.is_set():
                try:
                    if claiming is None:
                        self.wake.clear()  # what is accepted from now on wakes us again
                        claiming = asyncio.ensure_future(asyncio.to_thread(self._claim_and_build))
                    claimed, outgoing = await claiming
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
                        results = await self._send(outgoing)
                        if recording is not None:
                            await recording
                        recording = asyncio.ensure_future(
                            asyncio.to_thread(self._record, claimed, outgoing, results)
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
                    log.exception("dispatch round failed; retrying")
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
        """Claim one batch, send it, record it; return how many messages were attempted."""
        claimed, outgoing = await asyncio.to_thread(self._claim_and_build)
        if not claimed:
            return 0
        results = await self._send(outgoing)
        await asyncio.to_thread(self._record, claimed, outgoing, results)
        return len(claimed)

    async def _send(self, outgoing: Sequence[Outgoing]) -> list[AttemptResult]:
        by_domain: dict[str, list[Outgoing]] = defaultdict(list)
        for item in outgoing:
            by_domain[addresses.domain_of(item.rcpt)].append(item)
        groups = await asyncio.gather(
            *(self.channel.send_many(domain, batch) for domain, batch in by_domain.items())
        )
        return [result for group in groups for result in group]

    def _release(self, ids: list[int]) -> None:
        """Give back messages claimed ahead and never sent (their attempt did not happen)."""
        with self.engine.begin() as conn:
            queue.release(conn, self.owner, ids, clock.now())

    # -- database side (threads) ---------------------------------------------------------

    def _claim_and_build(self) -> tuple[list[queue.Claimed], list[Outgoing]]:
        now = clock.now()
        # The write transaction only claims: reading what the batch needs and preparing it
        # happen after it, so the SQLite write lock is free for the previous batch's record.
        with self.engine.begin() as conn:
            claimed = queue.claim_batch(
                conn,
                owner=self.owner,
                limit=self.settings.batch_size,
                lease=timedelta(seconds=self.settings.lease_seconds),
                now=now,
            )
        if not claimed:
            return [], []
        with db.reader(self.engine).connect() as conn:
            ids = [c.id for c in claimed]
            stored = dict(
                conn.execute(
                    select(t.bodies.c.message_id, t.bodies.c.raw).where(
                        t.bodies.c.message_id.in_(ids)
                    )
                ).all()
            )
            self._load_contents(conn, {c.content_id for c in claimed if c.id not in stored})
            self._load_domains(conn, {c.account_id for c in claimed})
            files = self._attachments(
                conn, [c.id for c in claimed if c.has_attachments and c.id not in stored]
            )
            new = [c for c in claimed if c.id not in stored]  # tracking: pixel, links, headers
            tracked = email_tracking.prepare_batch(
                conn, new, self._contents, self.settings, self.secret
            )
        outgoing = []
        for c in claimed:
            domain = self._bounce_domains[c.account_id]
            token = verp.token(self.secret, c.id)
            data = stored.get(c.id)
            if data is None:
                data = self.composer.build(
                    content_id=c.content_id,
                    content=self._contents[c.content_id],
                    to=c.to_addr,
                    token=token,
                    message_id_domain=domain,
                    attachments=files.get(c.id, ()),
                    **tracked[c.id].build_args(),
                )
            outgoing.append(Outgoing(c.id, f"{verp.PREFIX}{token}@{domain}", c.to_addr, data))
        return claimed, outgoing

    def _load_contents(self, conn: Connection, ids: set[int]) -> None:
        missing = ids - self._contents.keys()
        if not missing:
            return
        if len(self._contents) > 10_000:
            self._contents.clear()
        for row in conn.execute(select(t.contents).where(t.contents.c.id.in_(missing))):
            self._contents[row.id] = compose.Content(
                row.from_addr, row.from_name, row.subject, row.text, row.html, row.headers or {}
            )

    def _load_domains(self, conn: Connection, ids: set[int]) -> None:
        missing = ids - self._bounce_domains.keys()
        if missing:
            rows = conn.execute(
                select(t.accounts.c.id, t.accounts.c.bounce_domain).where(
                    t.accounts.c.id.in_(missing)
                )
            )
            self._bounce_domains.update(dict(rows.all()))

    def _attachments(self, conn: Connection, ids: list[int]) -> dict[int, list[compose.Attachment]]:
        found: dict[int, list[compose.Attachment]] = defaultdict(list)
        if ids:
            for row in conn.execute(
                select(t.attachments)
                .where(t.attachments.c.message_id.in_(ids))
                .order_by(t.attachments.c.id)
            ):
                found[row.message_id].append(
                    compose.Attachment(row.filename, row.content_type, row.data or b"")
                )
        return found

    def _record(
        self,
        claimed: Sequence[queue.Claimed],
        outgoing: Sequence[Outgoing],
        results: Sequence[AttemptResult],
    ) -> None:
        now = clock.now()
        by_id = {c.id: c for c in claimed}
        data_of = {o.message_id: o.data for o in outgoing}
        facts: list[recorder.Fact] = []
        extra: dict[int, dict[str, Any]] = {}
        attempt_rows: list[tuple[Any, ...]] = []
        keep_bodies: list[dict[str, Any]] = []
        when = batch.dialect_for(self.engine).when
        for result in results:  # built before the transaction: its lock is held less long
            c = by_id[result.message_id]
            fact, next_at = self._judge(c, result, now)
            facts.append(fact)
            extra[c.id] = {"lease_until": None, "lease_owner": None, "next_attempt_at": next_at}
            if next_at is not None and c.attempts == 1:
                keep_bodies.append({"message_id": c.id, "raw": data_of[c.id]})
            attempt_rows.append(
                (
                    c.id,
                    c.attempts,
                    when(result.started_at),
                    result.duration_ms,
                    result.via,
                    result.remote,
                    result.outcome,
                    result.code,
                    result.enhanced,
                    result.text,
                    result.transcript,
                )
            )
        with self.engine.begin() as conn:
            batch.dialect_of(conn).insert_many(
                conn, "delivery_attempts", _ATTEMPT_COLUMNS, attempt_rows
            )
            if keep_bodies:
                db.insert_ignore(conn, t.bodies, keep_bodies)
            recorder.record(conn, facts, policy=self.policy, extra=extra)

    def _judge(
        self, c: queue.Claimed, result: AttemptResult, now: datetime
    ) -> tuple[recorder.Fact, datetime | None]:
        """Turn one SMTP outcome into a fact, and the time of the next attempt if any."""
        reply = " ".join(filter(None, [str(result.code or ""), result.text])).strip()
        evidence = {"attempt": c.attempts, "remote": result.remote, "via": result.via}
        common = {
            "source": "smtp",
            "occurred_at": now,
            "data": evidence,
            "dedupe_key": f"attempt:{c.attempts}",
            "detail": reply,
        }
        if result.outcome == "accepted":
            kind = Kind.RELAYED if result.via == "relay" else Kind.DELIVERED
            return recorder.Fact(c.id, kind, code=result.enhanced, **common), None
        verdict = classify.classify(result.text, status=result.enhanced, reply_code=result.code)
        code = result.enhanced or (str(result.code) if result.code else None)
        if result.outcome == "temporary":
            delay = queue.backoff(
                c.attempts,
                minimum=self.settings.min_backoff,
                maximum=self.settings.max_backoff,
                retry_after=classify.retry_after(result.text),
            )
            if (now + delay - c.created_at).total_seconds() > self.settings.max_lifetime:
                return recorder.Fact(
                    c.id, Kind.EXPIRED, reason="expired", hard=False, code=code, **common
                ), None
            return recorder.Fact(
                c.id, Kind.DEFERRED, reason=verdict.reason, hard=False, code=code, **common
            ), now + delay
        # Permanent. Without a reply from any server it is Postwarden's own refusal (a null
        # MX, a domain that does not exist): failed, not bounced.
        kind = Kind.FAILED if result.code is None else Kind.BOUNCED
        return recorder.Fact(
            c.id, kind, reason=verdict.reason, hard=verdict.hard, code=code, **common
        ), None
