"""Messages as intake stores them: contents, messages (one per recipient and channel),
attachments and broadcasts, and the look-ups of a message by its idempotency key, for a
resend, or for what came back (tracking).

A message is stored in the status intake decided (``pending``, or dropped, blocked, ...);
the event of a decision is written by the recorder, the one writer of events, in the same
call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select
from sqlalchemy.exc import IntegrityError

from postwarden import errors
from postwarden.domain import clock, status
from postwarden.domain.status import Status
from postwarden.store import batch, recorder
from postwarden.store import tables as t

m = t.messages

Decision = tuple[Status, str]
"""What intake decided instead of queueing a message (one of :data:`status.DECISIONS`), and
why, in words."""


@dataclass(frozen=True, slots=True)
class NewContent:
    """What a message says, shared by every recipient of a broadcast."""

    account_id: int
    from_addr: str
    from_name: str
    subject: str
    text: str | None
    html: str | None
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One recipient of a content, on one channel."""

    account_id: int
    content_id: int
    channel: str
    to_addr: str
    category: str
    decision: Decision | None = None  # None: pending, due now
    metadata: dict[str, Any] = field(default_factory=dict)
    track: bool | None = None
    has_attachments: bool = False
    idempotency_key: str | None = None
    resend_of: int | None = None
    contact_id: int | None = None
    broadcast_id: int | None = None

    @property
    def status(self) -> Status:
        return self.decision[0] if self.decision else Status.PENDING


@dataclass(frozen=True, slots=True)
class NewAttachment:
    filename: str
    content_type: str
    data: bytes


# Built once: building a statement per request costs more than executing it.
_INSERT_CONTENT = insert(t.contents).returning(t.contents.c.id)
_INSERT_MESSAGE = insert(m).returning(m.c.id)
_INSERT_MESSAGES = insert(m)


def _content_row(content: NewContent, now: datetime) -> dict[str, Any]:
    return {
        "account_id": content.account_id,
        "from_addr": content.from_addr,
        "from_name": content.from_name,
        "subject": content.subject,
        "text": content.text,
        "html": content.html,
        "headers": content.headers,
        "created_at": now,
    }


def add_content(conn: Connection, content: NewContent) -> int:
    content_id = conn.scalar(_INSERT_CONTENT, _content_row(content, clock.now()))
    assert content_id is not None
    return content_id


def add_contents(conn: Connection, contents: Sequence[NewContent]) -> list[int]:
    """Several contents in one statement; their ids in order."""
    now = clock.now()
    rows = [_content_row(c, now) for c in contents]
    return batch.dialect_of(conn).insert_dicts_returning_ids(conn, t.contents, rows)


def _message_row(new: NewMessage, now: datetime) -> dict[str, Any]:
    decided = new.decision
    state = decided[0] if decided else Status.PENDING
    return {
        "account_id": new.account_id,
        "content_id": new.content_id,
        "channel": new.channel,
        "to_addr": new.to_addr,
        "category": new.category,
        "status": state.value,
        "reason": status.DECISION_REASONS.get(state),
        "detail": decided[1] if decided else None,
        "flags": [],
        "attempts": 0,
        "has_attachments": new.has_attachments,
        "track": new.track,
        "metadata": new.metadata,
        "next_attempt_at": None if decided else now,
        "created_at": now,
        "updated_at": now,
        "broadcast_id": new.broadcast_id,
        "contact_id": new.contact_id,
        "idempotency_key": new.idempotency_key,
        "resend_of": new.resend_of,
        "last_event_at": now,
    }


def add(conn: Connection, new: Sequence[NewMessage]) -> list[int]:
    """Store messages (one statement for several) and record their intake decisions; their
    ids in order."""
    now = clock.now()
    rows = [_message_row(n, now) for n in new]
    if len(rows) == 1:
        ids = [conn.scalar(_INSERT_MESSAGE, rows[0])]
    else:
        ids = batch.dialect_of(conn).insert_dicts_returning_ids(conn, m, rows)
    decided = [
        recorder.decision(mid, *n.decision)
        for n, mid in zip(new, ids, strict=True)
        if n.decision is not None
    ]
    if decided:
        recorder.record_decisions(conn, decided)
    return ids  # type: ignore[return-value]


def add_keyed(conn: Connection, new: NewMessage) -> int:
    """:func:`add` for one message with an idempotency key, under a savepoint: Conflict when
    another request is storing the same key right now."""
    try:
        with conn.begin_nested():
            (message_id,) = add(conn, [new])
    except IntegrityError as exc:
        raise errors.Conflict("a message with this idempotency key is being accepted") from exc
    return message_id


def add_attachments(
    conn: Connection, message_id: int, attachments: Sequence[NewAttachment]
) -> None:
    conn.execute(
        insert(t.attachments),
        [
            {
                "message_id": message_id,
                "filename": a.filename,
                "content_type": a.content_type,
                "size": len(a.data),
                "data": a.data,
            }
            for a in attachments
        ],
    )


def by_idempotency_key(conn: Connection, account_id: int, key: str) -> tuple[int, str] | None:
    """(id, status) of the account's message stored with this idempotency key."""
    found = conn.execute(
        select(m.c.id, m.c.status).where(m.c.account_id == account_id, m.c.idempotency_key == key)
    ).first()
    return (found.id, found.status) if found else None


def to_resend(conn: Connection, account_id: int, message_id: int) -> Row[Any]:
    """The account's message, whole (what a resend copies); NotFound for another's."""
    row = conn.execute(select(m).where(m.c.id == message_id, m.c.account_id == account_id)).first()
    if row is None:
        raise errors.NotFound(f"no message {message_id}")
    return row


# region broadcasts

Recipient = tuple[str, str, str, int | None, str | None]
"""One stored broadcast recipient: (address, channel, status, contact id, decision detail)."""


def add_broadcast(
    conn: Connection,
    *,
    account_id: int,
    content_id: int,
    category: str,
    track: bool | None,
    recipients: Sequence[Recipient],
) -> int:
    """Store a broadcast and its messages, and record their intake decisions; its id.

    The messages have every column but five in common: those go once per statement
    (:meth:`batch.Dialect.insert_sharing`), the rest once per row. No RETURNING: nothing
    needs the ids, and the decisions' events are made from the stored rows."""
    now = clock.now()
    broadcast_id = conn.scalar(
        insert(t.broadcasts)
        .values(
            account_id=account_id,
            content_id=content_id,
            category=category,
            total=len(recipients),
            created_at=now,
        )
        .returning(t.broadcasts.c.id)
    )
    assert broadcast_id is not None
    shared = {
        "account_id": account_id,
        "content_id": content_id,
        "category": category,
        "flags": [],
        "attempts": 0,
        "has_attachments": False,
        "track": track,
        "metadata": {},
        "created_at": now,
        "updated_at": now,
        "broadcast_id": broadcast_id,
        "idempotency_key": None,
        "resend_of": None,
        "last_event_at": now,
        "lease_until": None,
        "lease_owner": None,
    }
    sql = batch.dialect_of(conn)
    pending = Status.PENDING.value
    due = sql.when(now)
    reasons = {s.value: r for s, r in status.DECISION_REASONS.items()}
    sql.insert_sharing(
        conn,
        m,
        shared,
        ("to_addr", "channel", "status", "contact_id", "detail", "reason", "next_attempt_at"),
        [
            (a, ch, s, c, d, reasons.get(s), due if s == pending else None)
            for a, ch, s, c, d in recipients
        ],
    )
    if any(r[2] != pending for r in recipients):
        recorder.record_broadcast_decisions(conn, broadcast_id)
    return broadcast_id


# endregion
# region what tracking needs


def existing(conn: Connection, ids: Iterable[int]) -> set[int]:
    """Those of ``ids`` that are stored messages."""
    return set(conn.scalars(select(m.c.id).where(m.c.id.in_(list(ids)))))


def content_id_of(conn: Connection, message_id: int) -> int | None:
    return conn.scalar(select(m.c.content_id).where(m.c.id == message_id))


def bodies_of(conn: Connection, content_id: int) -> tuple[str | None, str | None] | None:
    """(html, text) of a content; None when there is no such content."""
    row = conn.execute(
        select(t.contents.c.html, t.contents.c.text).where(t.contents.c.id == content_id)
    ).first()
    return (row.html, row.text) if row else None


def category_of(conn: Connection, message_id: int) -> str | None:
    """The message's category; None when there is no such message."""
    return conn.scalar(select(m.c.category).where(m.c.id == message_id))


# endregion
