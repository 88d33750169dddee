"""All queue SQL: claiming due messages with leases, and the schedule of their next attempt.

Claims are per channel (``messages.channel``): a channel is only ever handed its own messages.
One statement serves both databases: PostgreSQL gets ``FOR UPDATE SKIP LOCKED`` so several
workers share the queue; SQLite drops the clause and relies on its single writer. A claim is
a lease: a worker that dies leaves its messages to be claimed again once the lease expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, or_, select, update

from postwarden.domain.status import TRANSITIONS, Status
from postwarden.store import tables as t

CLAIMABLE = tuple(s.value for s in Status if Status.SENDING in TRANSITIONS[s])
"""Statuses an attempt may start from (the status machine's table decides)."""

m = t.messages


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    account_id: int
    content_id: int
    to_addr: str
    attempts: int
    created_at: datetime
    has_attachments: bool
    broadcast_id: int | None = None  # these three: for tracking (email/tracking.py)
    category: str = ""
    track: bool | None = None


def claim_batch(
    conn: Connection, *, channel: str, owner: str, limit: int, lease: timedelta, now: datetime
) -> list[Claimed]:
    """Take up to ``limit`` of ``channel``'s due messages (oldest due first) and mark them
    ``sending``."""
    due = (
        select(m.c.id)
        .where(
            m.c.channel == channel,
            m.c.status.in_(CLAIMABLE),
            m.c.next_attempt_at <= now,
            or_(m.c.lease_until.is_(None), m.c.lease_until < now),
        )
        .order_by(m.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = conn.execute(
        update(m)
        .where(m.c.id.in_(due.scalar_subquery()))
        .values(
            status=Status.SENDING.value,
            lease_until=now + lease,
            lease_owner=owner,
            attempts=m.c.attempts + 1,
            updated_at=now,
        )
        .returning(
            m.c.id,
            m.c.account_id,
            m.c.content_id,
            m.c.to_addr,
            m.c.attempts,
            m.c.created_at,
            m.c.has_attachments,
            m.c.broadcast_id,
            m.c.category,
            m.c.track,
        )
    )
    return [Claimed(*row) for row in rows]


def release(conn: Connection, owner: str, ids: list[int], now: datetime) -> None:
    """Give back claimed messages untouched (shutting down before sending them): the attempt
    counted by the claim did not happen. They stay ``sending`` (claimable) and due now."""
    if ids:
        conn.execute(
            update(m)
            .where(and_(m.c.id.in_(ids), m.c.lease_owner == owner))
            .values(
                lease_until=None,
                lease_owner=None,
                next_attempt_at=now,
                attempts=m.c.attempts - 1,
            )
        )


def backoff(
    attempts: int, *, minimum: float, maximum: float, retry_after: float | None = None
) -> timedelta:
    """Exponential (minimum x 2^(n-1), capped), or what the server asked for."""
    if retry_after is not None:
        return timedelta(seconds=min(max(retry_after, 1), maximum))
    return timedelta(seconds=min(minimum * 2 ** max(attempts - 1, 0), maximum))
