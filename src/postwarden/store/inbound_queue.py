"""Inbound mails: kept raw as the inbound server accepts them, claimed by the worker that applies
them, marked with what became of each, and read back for the operators' review.

States: "new" (stored, not yet applied), "processing" (claimed), then one of "done" (its facts
are recorded, or it had none to record: an auto-reply), "unmatched" (about no message we know),
"unverified" (a bounce that names an address Postwarden mailed but carries no proof that it is
about a message Postwarden sent: shown for review, never acted on) or "error" (it could not be
read; the exception's text is kept with the raw mail).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, update

from postwarden.domain import clock
from postwarden.store import batch
from postwarden.store import tables as t

__all__ = [
    "CLAIM_TIMEOUT",
    "DONE",
    "ERROR",
    "NEW",
    "PROCESSING",
    "REVIEW",
    "UNMATCHED",
    "UNVERIFIED",
    "Outcome",
    "Stored",
    "claim",
    "finish",
    "hold",
    "mail",
    "read",
    "review_counts",
    "storable",
    "store",
    "to_review",
]

NEW = "new"
PROCESSING = "processing"
DONE = "done"
UNMATCHED = "unmatched"
UNVERIFIED = "unverified"
ERROR = "error"
REVIEW = (ERROR, UNVERIFIED)
"""The states an operator should look at."""

CLAIM_TIMEOUT = timedelta(minutes=5)
"""A mail still "processing" this long after it was claimed was left by a process that died:
it is claimed again (applying it twice changes nothing: its events are deduplicated)."""

_ERROR_CHARS = 2000

im = t.inbound_mails
_STORED = ("received_at", "peer", "mail_from", "rcpt_to", "raw", "state")
_FINISHED = ("state", "kind", "account_id", "message_id", "error")


@dataclass(frozen=True, slots=True)
class Stored:
    """A claimed mail as the worker reads it (``raw``: its start, what the parser uses)."""

    id: int
    raw: bytes
    rcpt_to: list[str]
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one mail: its final state and what it was found to be about."""

    id: int
    state: str
    kind: str | None = None
    account_id: int | None = None
    message_id: int | None = None
    error: str | None = None


def store(conn: Connection, mails: Sequence[tuple[str, str, list[str], bytes]]) -> list[int]:
    """Keep accepted mails (peer, mail_from, rcpt_to, raw) as "new" in the caller's
    transaction, with one multi-row INSERT; returns their ids in the mails' order. The rows
    are made before the statement runs: on SQLite its transaction holds the write lock."""
    sql = batch.dialect_of(conn)
    received_at = sql.when(clock.now())
    rows = [
        (received_at, storable(peer)[:100], storable(mail_from)[:320], sql.json(rcpt_to), raw, NEW)
        for peer, mail_from, rcpt_to, raw in mails
    ]
    return sql.insert_returning_ids(conn, "inbound_mails", _STORED, rows)


def claim(conn: Connection, limit: int) -> list[int]:
    """Take up to ``limit`` new mails (oldest first) and mark them "processing"; on
    PostgreSQL another process skips the rows this one holds."""
    now = clock.now()
    pick = (
        select(im.c.id)
        .where(
            or_(
                im.c.state == NEW,
                and_(im.c.state == PROCESSING, im.c.claimed_at < now - CLAIM_TIMEOUT),
            )
        )
        .order_by(im.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed = conn.scalars(
        update(im)
        .where(im.c.id.in_(pick.scalar_subquery()))
        .values(state=PROCESSING, claimed_at=now)
        .returning(im.c.id)
    )
    return sorted(claimed)


def read(conn: Connection, ids: Sequence[int], max_bytes: int) -> list[Stored]:
    """The claimed mails ``ids`` (those still there, in id order), each raw mail cut to its
    first ``max_bytes``: a batch of mails of the maximum size costs no more memory."""
    rows = conn.execute(
        select(
            im.c.id,
            func.substr(im.c.raw, 1, max_bytes).label("raw"),
            im.c.rcpt_to,
            im.c.received_at,
        )
        .where(im.c.id.in_(ids))
        .order_by(im.c.id)
    )
    # SQLite's substr of an empty blob is NULL.
    return [Stored(r.id, bytes(r.raw or b""), list(r.rcpt_to or ()), r.received_at) for r in rows]


def hold(conn: Connection, inbound_id: int) -> None:
    """Mark one mail "processing" again: a write first, so SQLite takes its write lock at the
    start of the transaction instead of failing to upgrade a read lock later."""
    conn.execute(update(im).where(im.c.id == inbound_id).values(state=PROCESSING))


def finish(conn: Connection, outcomes: Sequence[Outcome]) -> None:
    """Mark what became of each mail, in one statement per chunk."""
    batch.dialect_of(conn).update_many(
        conn,
        "inbound_mails",
        _FINISHED,
        [(o.id, o.state, o.kind, o.account_id, o.message_id, _clip(o.error)) for o in outcomes],
    )


def _clip(error: str | None) -> str | None:
    return storable(error)[:_ERROR_CHARS] if error is not None else None


def storable(value: str) -> str:
    """Text as both databases take it: PostgreSQL refuses NUL characters in text (a mail's
    text may hold them)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


# region review (the admin UI)


def review_counts(conn: Connection, account_id: int, since: datetime) -> dict[str, int]:
    """How many of an account's mails received since ``since`` are in each review state."""
    rows = conn.execute(
        select(im.c.state, func.count())
        .where(im.c.state.in_(REVIEW), im.c.account_id == account_id, im.c.received_at >= since)
        .group_by(im.c.state)
    )
    counts = dict.fromkeys(REVIEW, 0)
    counts.update({state: n for state, n in rows})
    return counts


def to_review(
    conn: Connection, account_id: int, since: datetime, limit: int = 200
) -> list[dict[str, Any]]:
    """An account's unreadable and unverified mails since ``since``, newest first, with the
    message each names (or may be about) and its recipient."""
    m = t.messages
    rows = conn.execute(
        select(
            im.c.id,
            im.c.received_at,
            im.c.peer,
            im.c.mail_from,
            im.c.rcpt_to,
            im.c.state,
            im.c.kind,
            im.c.error,
            im.c.message_id,
            m.c.to_addr,
            m.c.status,
            func.length(im.c.raw).label("size"),
        )
        .outerjoin(m, and_(m.c.id == im.c.message_id, m.c.account_id == account_id))
        .where(im.c.state.in_(REVIEW), im.c.account_id == account_id, im.c.received_at >= since)
        .order_by(im.c.id.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]


def mail(conn: Connection, account_id: int, inbound_id: int) -> bytes | None:
    """One of an account's inbound mails, raw and whole; None when it has no such mail."""
    raw = conn.scalar(select(im.c.raw).where(im.c.id == inbound_id, im.c.account_id == account_id))
    return bytes(raw) if raw is not None else None


# endregion
