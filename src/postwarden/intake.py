"""Intake: validate what the API or SMTP submission hands over and store it in one go.

Every intake decision (duplicate, no_channel, dropped, blocked, failed) becomes the message's
status at once; only ``pending`` messages reach the dispatcher. A refused request stores
nothing: validation happens before the first write, and all writes share one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from postwarden import addresses, clock, errors, schemas
from postwarden.accounts import Account
from postwarden.settings import Settings
from postwarden.status import Kind, Status
from postwarden.store import tables as t
from postwarden.suppression import Screen

_DECISION_KIND = {
    Status.FAILED: Kind.FAILED,
    Status.DROPPED: Kind.DROPPED,
    Status.BLOCKED: Kind.BLOCKED,
    Status.DUPLICATE: Kind.DUPLICATE,
    Status.NO_CHANNEL: Kind.NO_CHANNEL,
}
_DECISION_REASON = {
    Status.FAILED: "invalid_address",
    Status.DROPPED: "suppressed",
    Status.BLOCKED: "blocked",
    Status.DUPLICATE: "duplicate",
    Status.NO_CHANNEL: "no_channel",
}


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int
    max_broadcast_recipients: int
    unsubscribe_exempt: frozenset[str] = frozenset()
    """Categories an unsubscribe never drops (transactional mail)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            settings.max_message_bytes, settings.max_broadcast_recipients, settings.transactional
        )


# Built once: building a statement per request costs more than executing it.
_INSERT_CONTENT = insert(t.contents).returning(t.contents.c.id)
_INSERT_MESSAGE = insert(t.messages).returning(t.messages.c.id)
_INSERT_EVENTS = insert(t.events)


def _store_content(
    conn: Connection,
    account: Account,
    body: schemas.ContentIn,
    limits: Limits,
    extra_bytes: int = 0,
) -> int:
    name, sender = addresses.check_mailbox(body.from_)
    size = len(body.text or "") + len(body.html or "") + extra_bytes
    if size > limits.max_message_bytes:
        raise errors.InvalidInput(
            f"the message is {size} bytes; the limit is {limits.max_message_bytes}"
        )
    content_id = conn.scalar(
        _INSERT_CONTENT,
        {
            "account_id": account.id,
            "from_addr": sender,
            "from_name": name,
            "subject": body.subject,
            "text": body.text,
            "html": body.html,
            "headers": body.headers,
            "created_at": clock.now(),
        },
    )
    assert content_id is not None
    return content_id


def _decision_events(rows: Sequence[dict[str, Any]], ids: Sequence[int]) -> list[dict[str, Any]]:
    now = clock.now()
    return [
        {
            "message_id": mid,
            "kind": _DECISION_KIND[Status(row["status"])].value,
            "source": "intake",
            "occurred_at": now,
            "recorded_at": now,
            "status_after": row["status"],
            "reason": row["reason"],
            "detail": row["detail"],
            "data": {},
        }
        for row, mid in zip(rows, ids, strict=True)
        if row["status"] != Status.PENDING.value
    ]


def _message_row(
    account: Account,
    content_id: int,
    address: str,
    category: str,
    decision: tuple[Status, str] | None,
    **more: Any,
) -> dict[str, Any]:
    now = clock.now()
    state = decision[0] if decision else Status.PENDING
    return {
        "account_id": account.id,
        "content_id": content_id,
        "channel": "email",
        "to_addr": address,
        "category": category,
        "status": state.value,
        "reason": _DECISION_REASON.get(state),
        "detail": decision[1] if decision else None,
        "flags": [],
        "attempts": 0,
        "has_attachments": False,
        "track": None,
        "metadata": {},
        "next_attempt_at": now if decision is None else None,
        "created_at": now,
        "updated_at": now,
        "broadcast_id": None,
        "contact_id": None,
        "idempotency_key": None,
        "resend_of": None,
        "last_event_at": now,
    } | more


def _insert_messages(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    if len(rows) == 1:
        ids = [conn.scalar(_INSERT_MESSAGE, rows[0])]
    else:
        ids = list(
            conn.scalars(
                insert(t.messages).returning(t.messages.c.id, sort_by_parameter_order=True), rows
            )
        )
    events = _decision_events(rows, ids)
    if events:
        conn.execute(_INSERT_EVENTS, events)
    return ids  # type: ignore[return-value]


def submit_message(
    conn: Connection,
    account: Account,
    body: schemas.MessageIn,
    limits: Limits,
    *,
    resend_of: int | None = None,
) -> schemas.Accepted:
    """Store one email; an idempotency key that was seen before returns the first message."""
    if body.idempotency_key:
        found = conn.execute(
            select(t.messages.c.id, t.messages.c.status).where(
                t.messages.c.account_id == account.id,
                t.messages.c.idempotency_key == body.idempotency_key,
            )
        ).first()
        if found:
            return schemas.Accepted(id=found.id, status=found.status)
    to = addresses.check(body.to)
    files = [(a, a.data()) for a in body.attachments]
    content_id = _store_content(conn, account, body, limits, sum(len(d) for _, d in files))
    decision = Screen(conn, account.id, [to], limits.unsubscribe_exempt).decide(to, body.category)
    row = _message_row(
        account,
        content_id,
        to,
        body.category,
        decision,
        metadata=body.metadata,
        idempotency_key=body.idempotency_key,
        has_attachments=bool(files),
        resend_of=resend_of,
        track=body.track,
    )
    if body.idempotency_key is None:  # nothing unique to collide on: no savepoint needed
        (message_id,) = _insert_messages(conn, [row])
    else:
        try:
            with conn.begin_nested():
                (message_id,) = _insert_messages(conn, [row])
        except IntegrityError as exc:  # the same idempotency key, submitted concurrently
            raise errors.Conflict(
                "a message with this idempotency key is being accepted"
            ) from exc
    if files:
        conn.execute(
            insert(t.attachments),
            [
                {
                    "message_id": message_id,
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "size": len(data),
                    "data": data,
                }
                for a, data in files
            ],
        )
    return schemas.Accepted(id=message_id, status=row["status"])


def _allowed(preferences: dict[str, list[str]], category: str, channel: str) -> bool:
    chosen = preferences.get(category, preferences.get("*"))
    return chosen is None or channel in chosen


def submit_broadcast(
    conn: Connection, account: Account, body: schemas.BroadcastIn, limits: Limits
) -> schemas.BroadcastAccepted:
    """Store one content for many recipients, taking every intake decision in bulk."""
    if len(body.recipients) > limits.max_broadcast_recipients:
        raise errors.InvalidInput(
            f"{len(body.recipients)} recipients; the limit is {limits.max_broadcast_recipients}"
        )
    contact_ids = sorted({r.contact_id for r in body.recipients if r.contact_id is not None})
    contacts: dict[int, Any] = {}
    for i in range(0, len(contact_ids), 2000):
        for row in conn.execute(
            select(t.contacts.c.id, t.contacts.c.email, t.contacts.c.preferences).where(
                t.contacts.c.account_id == account.id,
                t.contacts.c.id.in_(contact_ids[i : i + 2000]),
            )
        ):
            contacts[row.id] = row
    unknown = [cid for cid in contact_ids if cid not in contacts]
    if unknown:
        shown = ", ".join(map(str, unknown[:10]))
        raise errors.InvalidInput(
            f"unknown contact ids: {shown}" + (" ..." if len(unknown) > 10 else "")
        )

    category = body.category
    planned: list[tuple[str, int | None, tuple[Status, str] | None]] = []
    for recipient in body.recipients:
        contact = contacts.get(recipient.contact_id) if recipient.contact_id else None
        raw = contact.email if contact is not None else recipient.email
        if not raw:
            planned.append(
                ("", recipient.contact_id, (Status.NO_CHANNEL, "the contact has no email address"))
            )
            continue
        if contact is not None and not _allowed(contact.preferences or {}, category, "email"):
            planned.append(
                (
                    addresses.normalize(raw),
                    recipient.contact_id,
                    (Status.NO_CHANNEL, f"the contact did not opt in to email for {category!r}"),
                )
            )
            continue
        try:
            planned.append((addresses.check(raw), recipient.contact_id, None))
        except errors.InvalidInput as exc:
            planned.append((raw.strip()[:320], recipient.contact_id, (Status.FAILED, exc.message)))

    content_id = _store_content(conn, account, body, limits)
    broadcast_id = conn.scalar(
        insert(t.broadcasts)
        .values(
            account_id=account.id,
            content_id=content_id,
            category=category,
            total=len(planned),
            created_at=clock.now(),
        )
        .returning(t.broadcasts.c.id)
    )
    screen = Screen(
        conn, account.id, [a for a, _, d in planned if d is None], limits.unsubscribe_exempt
    )
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for address, contact_id, decision in planned:
        if decision is None:
            if address in seen:
                decision = (Status.DUPLICATE, f"{address} appears earlier in this broadcast")
            else:
                seen.add(address)
                decision = screen.decide(address, category)
        row = _message_row(
            account,
            content_id,
            address,
            category,
            decision,
            broadcast_id=broadcast_id,
            contact_id=contact_id,
            track=body.track,
        )
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        rows.append(row)
    for i in range(0, len(rows), 5000):
        _insert_messages(conn, rows[i : i + 5000])
    assert broadcast_id is not None
    return schemas.BroadcastAccepted(id=broadcast_id, counts=counts)


def resend(conn: Connection, account: Account, message_id: int, to: str | None) -> schemas.Accepted:
    """A new message with the same content, to the same or a corrected address, linked to the
    original. Refused (409) for a message that had attachments: they left storage with it."""
    row = conn.execute(
        select(t.messages).where(
            t.messages.c.id == message_id, t.messages.c.account_id == account.id
        )
    ).first()
    if row is None:
        raise errors.NotFound(f"no message {message_id}")
    if row.has_attachments:
        raise errors.Conflict(
            "a message that had attachments cannot be resent: its attachments "
            "were deleted once it had left; send it again with them"
        )
    if row.status in (Status.PENDING.value, Status.SENDING.value, Status.DEFERRED.value):
        raise errors.Conflict(f"the message is still {row.status}; wait for it or cancel it")
    address = addresses.check(to) if to else row.to_addr
    if not address:
        raise errors.InvalidInput('the original has no address: give one in "to"')
    decision = Screen(conn, account.id, [address]).decide(address, row.category)
    new = _message_row(
        account,
        row.content_id,
        address,
        row.category,
        decision,
        metadata=row.metadata,
        resend_of=row.id,
        contact_id=row.contact_id,
        broadcast_id=row.broadcast_id,
        track=row.track,
    )
    (new_id,) = _insert_messages(conn, [new])
    return schemas.Accepted(id=new_id, status=new["status"])
