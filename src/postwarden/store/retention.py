"""Retention: delete old messages with everything kept about them, in bounded batches.

``postwarden purge --older-than DAYS`` removes messages created before the cut-off that have
left the queue (not in flight: ``status.IN_FLIGHT``), with their events, delivery
attempts, stored bodies and attachments, then the broadcasts, contents and processed inbound
mails nothing refers to any more, and last folds the undelivered counters. Each batch is its own
short transaction, so the service keeps accepting and delivering while a purge runs (SQLite has
one writer: short transactions keep its waits short; PostgreSQL locks only the rows of the batch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, delete, exists, func, select, update

from postwarden.domain import clock, status
from postwarden.store import batch
from postwarden.store import tables as t

m = t.messages


@dataclass
class Purged:
    messages: int = 0
    events: int = 0
    attempts: int = 0
    bodies: int = 0
    attachments: int = 0
    broadcasts: int = 0
    contents: int = 0
    inbound_mails: int = 0
    counter_rows: int = 0

    def summary(self) -> str:
        return ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in vars(self).items())


def _batch(engine: Engine, cutoff: datetime, size: int, purged: Purged) -> int:
    with engine.begin() as conn:
        ids = list(
            conn.scalars(
                select(m.c.id)
                .where(m.c.created_at < cutoff, m.c.status.not_in(status.IN_FLIGHT_VALUES))
                .order_by(m.c.id)
                .limit(size)
            )
        )
        if not ids:
            return 0
        purged.events += conn.execute(
            delete(t.events).where(t.events.c.message_id.in_(ids))
        ).rowcount
        purged.attempts += conn.execute(
            delete(t.delivery_attempts).where(t.delivery_attempts.c.message_id.in_(ids))
        ).rowcount
        purged.bodies += conn.execute(
            delete(t.bodies).where(t.bodies.c.message_id.in_(ids))
        ).rowcount
        purged.attachments += conn.execute(
            delete(t.attachments).where(t.attachments.c.message_id.in_(ids))
        ).rowcount
        # Links to the purged messages that stay (a newer resend, a suppression's evidence).
        conn.execute(update(m).where(m.c.resend_of.in_(ids)).values(resend_of=None))
        conn.execute(
            update(t.suppressions)
            .where(t.suppressions.c.message_id.in_(ids))
            .values(message_id=None)
        )
        purged.messages += conn.execute(delete(m).where(m.c.id.in_(ids))).rowcount
        return len(ids)


def _leftovers(engine: Engine, cutoff: datetime, size: int, purged: Purged) -> None:
    """Broadcasts, contents and processed inbound mails older than the cut-off that nothing
    refers to any more, in batches too."""
    b, c, im = t.broadcasts, t.contents, t.inbound_mails
    steps: list[tuple[str, Callable[[], object]]] = [
        (
            "broadcasts",
            lambda: select(b.c.id).where(
                b.c.created_at < cutoff, ~exists().where(m.c.broadcast_id == b.c.id)
            ),
        ),
        (
            "contents",
            lambda: select(c.c.id).where(
                c.c.created_at < cutoff,
                ~exists().where(m.c.content_id == c.c.id),
                ~exists().where(b.c.content_id == c.c.id),
            ),
        ),
        (
            "inbound_mails",
            lambda: select(im.c.id).where(
                and_(im.c.received_at < cutoff, im.c.state.not_in(("new", "processing")))
            ),
        ),
    ]
    tables = {"broadcasts": b, "contents": c, "inbound_mails": im}
    for name, query in steps:
        table = tables[name]
        while True:
            with engine.begin() as conn:
                ids = list(conn.scalars(query().limit(size)))  # type: ignore[attr-defined]
                if not ids:
                    break
                if name == "inbound_mails":
                    conn.execute(
                        update(t.events)
                        .where(t.events.c.inbound_id.in_(ids))
                        .values(inbound_id=None)
                    )
                done = conn.execute(delete(table).where(table.c.id.in_(ids))).rowcount
            setattr(purged, name, getattr(purged, name) + done)


def purge(
    engine: Engine,
    older_than: timedelta,
    *,
    batch_size: int = 1000,
    pause: float = 0.01,
    now: datetime | None = None,
    progress: Callable[[Purged], None] | None = None,
) -> Purged:
    """Delete what is older than ``older_than``; ``pause`` seconds between batches leave room
    for the running service's own transactions."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cutoff = (now or clock.now()) - older_than
    purged = Purged()
    while _batch(engine, cutoff, batch_size, purged) == batch_size:
        if progress is not None:
            progress(purged)
        if pause:
            time.sleep(pause)
    _leftovers(engine, cutoff, batch_size, purged)
    purged.counter_rows = compact_counts(engine)
    if progress is not None:
        progress(purged)
    return purged


def compact_counts(engine: Engine) -> int:
    """Fold ``undelivered_counts`` into one row per (account, day, status) and delete the rows
    that count nothing; returns how many rows went. On PostgreSQL the triggers give each
    backend rows of its own, so rows pile up with every connection the service ever opened;
    on both databases purged days leave rows of zero. No sum changes."""
    c = t.undelivered_counts
    folded = select(func.count()).select_from(c).where(c.c.writer == 0)
    removed = 0
    with engine.begin() as conn:
        sql = batch.dialect_of(conn)
        if sql.name == "postgresql":
            # One compaction at a time, so the writer-0 rows it adds are what their count
            # grows by.
            sql.lock_counts(conn)
            before = conn.scalar(folded) or 0
            moved = sql.fold_counts_of_backends(conn)
            removed = moved - ((conn.scalar(folded) or 0) - before)
        removed += conn.execute(delete(c).where(c.c.writer == 0, c.c.n == 0)).rowcount
    return removed
