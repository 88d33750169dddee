"""Intake: validate what the API or SMTP submission hands over and store it in one go.

Every intake decision (duplicate, no_channel, dropped, blocked, failed) becomes the message's
status at once; only ``pending`` messages reach the dispatcher. A refused request stores
nothing: validation happens before the first write, and all writes share one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, insert, literal, select
from sqlalchemy.exc import IntegrityError

from postwarden import errors
from postwarden.domain import addresses, clock
from postwarden.domain.status import Kind, Status
from postwarden.intake import schemas
from postwarden.settings import Settings
from postwarden.store import batch
from postwarden.store import tables as t
from postwarden.store.accounts import Account
from postwarden.store.suppression import Screen

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
_INSERT_MESSAGES_MANY = insert(t.messages)
_REASON_BY_VALUE = {state.value: reason for state, reason in _DECISION_REASON.items()}


def _content_row(
    account: Account, body: schemas.ContentIn, limits: Limits, extra_bytes: int = 0
) -> dict[str, Any]:
    """The contents row for ``body``, once its sender and size are checked."""
    name, sender = addresses.check_mailbox(body.from_)
    size = len(body.text or "") + len(body.html or "") + extra_bytes
    if size > limits.max_message_bytes:
        raise errors.InvalidInput(
            f"the message is {size} bytes; the limit is {limits.max_message_bytes}"
        )
    return {
        "account_id": account.id,
        "from_addr": sender,
        "from_name": name,
        "subject": body.subject,
        "text": body.text,
        "html": body.html,
        "headers": body.headers,
        "created_at": clock.now(),
    }


def _store_content(
    conn: Connection,
    account: Account,
    body: schemas.ContentIn,
    limits: Limits,
    extra_bytes: int = 0,
) -> int:
    content_id = conn.scalar(_INSERT_CONTENT, _content_row(account, body, limits, extra_bytes))
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


def _plain_sql_ok(table: Table, columns: Sequence[str]) -> bool:
    """Whether plain SQL naming only ``columns`` leaves out no column that needs SQLAlchemy's
    own default."""
    return all(c.name in columns or c.primary_key or c.default is None for c in table.columns)


def _insert_returning_ids(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows that all have the same keys and return their ids in order, as plain SQL
    (``store.raw``): SQLAlchemy's per-row parameter processing and RETURNING bookkeeping were
    most of a group commit's cost."""
    columns = list(rows[0])
    assert _plain_sql_ok(table, columns)
    dialect = batch.dialect_of(conn)
    convert = [dialect.converter(table.c[name].type) for name in columns]
    values = [tuple(f(row[c]) for f, c in zip(convert, columns, strict=True)) for row in rows]
    return dialect.insert_returning_ids(conn, table.name, columns, values)


def _insert_messages(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    if len(rows) == 1:
        ids = [conn.scalar(_INSERT_MESSAGE, rows[0])]
    else:
        ids = _insert_returning_ids(conn, t.messages, rows)
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
            raise errors.Conflict("a message with this idempotency key is being accepted") from exc
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


def submit_many(
    conn: Connection, items: Sequence[tuple[Account, schemas.MessageIn]], limits: Limits
) -> list[schemas.Accepted | errors.PostwardenError]:
    """What :func:`submit_message` does for each item, with one statement per table for all of
    them (the API's group commit). A refused item gets its error and stores nothing; an item
    with an idempotency key or attachments is stored alone, under a savepoint."""
    outcomes: list[schemas.Accepted | errors.PostwardenError | None] = [None] * len(items)
    checked: list[tuple[int, Account, schemas.MessageIn, str, dict[str, Any]]] = []
    for i, (account, body) in enumerate(items):
        try:
            if body.idempotency_key is not None or body.attachments:
                with conn.begin_nested():
                    outcomes[i] = submit_message(conn, account, body, limits)
            else:
                to = addresses.check(body.to)
                checked.append((i, account, body, to, _content_row(account, body, limits)))
        except errors.PostwardenError as exc:
            outcomes[i] = exc
    if checked:
        content_ids = _insert_returning_ids(conn, t.contents, [c[4] for c in checked])
        wanted: dict[int, tuple[Account, list[str]]] = {}
        for _, account, _, to, _ in checked:
            wanted.setdefault(account.id, (account, []))[1].append(to)
        screens = {
            account_id: Screen(conn, account_id, candidates, limits.unsubscribe_exempt)
            for account_id, (_, candidates) in wanted.items()
        }
        rows = [
            _message_row(
                account,
                content_id,
                to,
                body.category,
                screens[account.id].decide(to, body.category),
                metadata=body.metadata,
                track=body.track,
            )
            for (_, account, body, to, _), content_id in zip(checked, content_ids, strict=True)
        ]
        ids = _insert_messages(conn, rows)
        for (i, *_), message_id, row in zip(checked, ids, rows, strict=True):
            outcomes[i] = schemas.Accepted(id=message_id, status=row["status"])
    return outcomes  # type: ignore[return-value]  # every item has its outcome by now


def _allowed(preferences: dict[str, list[str]], category: str, channel: str) -> bool:
    chosen = preferences.get(category, preferences.get("*"))
    return chosen is None or channel in chosen


def _insert_broadcast(
    conn: Connection, constants: dict[str, Any], rows: list[tuple[str, str, int | None, Any]]
) -> None:
    """Insert a broadcast's messages: ``constants`` are the columns every row shares, each row
    is (to_addr, status, contact_id, decision detail). No RETURNING: nothing needs the ids
    here (the decision events are inserted from the stored rows, see :func:`submit_broadcast`).

    On SQLite, ``INSERT ... SELECT <shared values>, <row values> FROM (VALUES ...)`` of 5,000
    rows at a time: the shared values are bound-processed (JSON, timestamps) and sent once per
    statement, and the few statements each open one statement journal (the count triggers
    make SQLite open one per statement; an executemany opened one per row). Elsewhere
    SQLAlchemy's executemany (insertmanyvalues batches on PostgreSQL).
    """
    pending = Status.PENDING.value
    now = constants["created_at"]
    names = [*constants, "to_addr", "status", "contact_id", "detail", "reason", "next_attempt_at"]
    plain = conn.dialect.name == "sqlite" and conn.dialect.paramstyle == "qmark"
    if not plain or not _plain_sql_ok(t.messages, names):
        for i in range(0, len(rows), 5000):
            conn.execute(
                _INSERT_MESSAGES_MANY,
                [
                    constants
                    | {
                        "to_addr": address,
                        "status": state,
                        "contact_id": contact_id,
                        "reason": _REASON_BY_VALUE.get(state),
                        "detail": detail,
                        "next_attempt_at": now if state == pending else None,
                    }
                    for address, state, contact_id, detail in rows[i : i + 5000]
                ],
            )
        return
    dialect = conn.dialect

    def processed(name: str, value: Any) -> Any:
        process = t.messages.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        return process(value) if process is not None and value is not None else value

    quote = dialect.identifier_preparer.quote
    head = tuple(processed(n, v) for n, v in constants.items())
    due = processed("next_attempt_at", now)
    reasons = _REASON_BY_VALUE
    per_row = len(names) - len(head)  # what differs between rows; the rest is bound once
    chunk = 5_000  # x 6 values: under SQLite's 32,766 parameters
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        values = ", ".join([f"({', '.join('?' * per_row)})"] * len(part))
        picked = ", ".join(f"column{k + 1}" for k in range(per_row))
        conn.exec_driver_sql(
            f"INSERT INTO {quote(t.messages.name)} ({', '.join(map(quote, names))}) "
            f"SELECT {', '.join('?' * len(head))}, {picked} FROM (VALUES {values})",
            (
                *head,
                *(
                    v
                    for a, s, c, d in part
                    for v in (a, s, c, d, reasons.get(s), due if s == pending else None)
                ),
            ),
        )


def _broadcast_events(conn: Connection, broadcast_id: int) -> None:
    """One event per intake decision of a broadcast (every row that is not pending), in
    message order, from the rows just stored: the same rows :func:`_decision_events` makes."""
    now = clock.now()
    m = t.messages
    ev = t.events
    conn.execute(
        insert(ev).from_select(
            [
                "message_id",
                "kind",
                "source",
                "occurred_at",
                "recorded_at",
                "status_after",
                "reason",
                "detail",
                "data",
            ],
            select(
                m.c.id,
                m.c.status,  # the decision's event kind has the status's name
                literal("intake", ev.c.source.type),
                literal(now, ev.c.occurred_at.type),
                literal(now, ev.c.recorded_at.type),
                m.c.status,
                m.c.reason,
                m.c.detail,
                literal({}, ev.c.data.type),
            )
            .where(m.c.broadcast_id == broadcast_id, m.c.status != Status.PENDING.value)
            .order_by(m.c.id),
        )
    )


def submit_broadcast(
    conn: Connection, account: Account, body: schemas.BroadcastIn, limits: Limits
) -> schemas.BroadcastAccepted:
    """Store one content for many recipients, taking every intake decision in bulk."""
    recipients = body.recipients
    if len(recipients) > limits.max_broadcast_recipients:
        raise errors.InvalidInput(
            f"{len(recipients)} recipients; the limit is {limits.max_broadcast_recipients}"
        )
    contact_ids = sorted({cid for r in recipients if (cid := r.get("contact_id")) is not None})
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
    failed = Status.FAILED.value
    no_channel = Status.NO_CHANNEL.value
    # (address, contact id, decided status or None, detail)
    planned: list[tuple[str, int | None, str | None, str | None]] = []
    plan = planned.append
    check = addresses.check
    plain = addresses.plain
    for recipient in recipients:
        contact_id = recipient.get("contact_id")
        contact = contacts.get(contact_id) if contact_id else None
        raw = contact.email if contact is not None else recipient.get("email")
        if contact is None and raw and (address := plain(raw)) is not None:
            plan((address, contact_id, None, None))  # the common case: a plain address
            continue
        if not raw:
            plan(("", contact_id, no_channel, "the contact has no email address"))
            continue
        if contact is not None and not _allowed(contact.preferences or {}, category, "email"):
            plan(
                (
                    addresses.normalize(raw),
                    contact_id,
                    no_channel,
                    f"the contact did not opt in to email for {category!r}",
                )
            )
            continue
        try:
            plan((check(raw), contact_id, None, None))
        except errors.InvalidInput as exc:
            plan((raw.strip()[:320], contact_id, failed, exc.message))

    content_id = _store_content(conn, account, body, limits)
    now = clock.now()
    broadcast_id = conn.scalar(
        insert(t.broadcasts)
        .values(
            account_id=account.id,
            content_id=content_id,
            category=category,
            total=len(planned),
            created_at=now,
        )
        .returning(t.broadcasts.c.id)
    )
    assert broadcast_id is not None
    screen = Screen(
        conn, account.id, [a for a, _, d, _ in planned if d is None], limits.unsubscribe_exempt
    )
    seen: set[str] = set()
    add_seen = seen.add
    decide = screen.decide
    duplicate = Status.DUPLICATE.value
    pending = Status.PENDING.value
    rows: list[tuple[str, str, int | None, str | None]] = []
    row = rows.append
    for address, contact_id, state, detail in planned:
        if state is None:
            if address in seen:
                state, detail = duplicate, f"{address} appears earlier in this broadcast"
            else:
                add_seen(address)
                decision = decide(address, category)
                if decision is None:
                    state = pending
                else:
                    state, detail = decision[0].value, decision[1]
        row((address, state, contact_id, detail))
    counts: dict[str, int] = {}
    for _, state, _, _ in rows:
        counts[state] = counts.get(state, 0) + 1
    constants = {
        "account_id": account.id,
        "content_id": content_id,
        "channel": "email",
        "category": category,
        "flags": [],
        "attempts": 0,
        "has_attachments": False,
        "track": body.track,
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
    _insert_broadcast(conn, constants, rows)
    if len(rows) != counts.get(pending, 0):
        _broadcast_events(conn, broadcast_id)
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
