"""Record what was learned about messages: store each event, move the headline through the
status machine, and act on it (suppress the address after a hard bounce or a complaint).

Every source of facts ends here: the dispatcher's SMTP replies, bounce mails, webhooks,
tracking and people's actions. Batches keep the dispatcher's writes cheap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, delete, select, update

from postwarden import errors
from postwarden.domain import clock, status
from postwarden.domain.status import Flag, Kind, State, Status
from postwarden.store import batch, suppression
from postwarden.store import tables as t


@dataclass(frozen=True, slots=True)
class Fact:
    """One thing learned about one message, with its evidence."""

    message_id: int
    kind: Kind
    source: str
    occurred_at: datetime = field(default_factory=clock.now)
    reason: str | None = None
    hard: bool | None = None
    code: str | None = None
    detail: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    dedupe_key: str | None = None
    inbound_id: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    message_id: int
    before: Status
    after: Status
    flags: frozenset[Flag]
    recorded: bool  # False for a duplicate of an event already kept


_REASON_KINDS = frozenset(
    {
        Kind.BOUNCED,
        Kind.EXPIRED,
        Kind.FAILED,
        Kind.DEFERRED,
        Kind.DROPPED,
        Kind.BLOCKED,
        Kind.DUPLICATE,
        Kind.NO_CHANNEL,
    }
)


def _refold(conn: Connection, message_id: int) -> State:
    kinds = conn.scalars(
        select(t.events.c.kind)
        .where(t.events.c.message_id == message_id)
        .order_by(t.events.c.occurred_at, t.events.c.id)
    )
    return status.fold(Kind(kind) for kind in kinds)


def record(
    conn: Connection,
    facts: Sequence[Fact],
    *,
    policy: suppression.Policy,
    extra: dict[int, dict[str, Any]] | None = None,
) -> list[Outcome]:
    """Apply facts in order; ``extra`` adds column values to a message's update (the queue's
    lease and schedule). Events are idempotent through their dedupe keys.

    The hot statements (the rows' read, the events' insert, the messages' update) are plain
    SQL prepared once per dialect (:mod:`postwarden.store.batch`): this runs for every message
    the dispatcher sends, and SQLAlchemy's statement building and per-row bind processing
    were half of its cost."""
    sql = batch.dialect_of(conn)
    ids = sorted({fact.message_id for fact in facts})
    rows = _load_rows(conn, sql, ids)
    missing = set(ids) - rows.keys()
    if missing:
        raise errors.NotFound(f"no message {min(missing)}")

    keyed = {(f.message_id, f.dedupe_key) for f in facts if f.dedupe_key}
    seen: set[tuple[int, str]] = set()
    if keyed:
        seen = _seen_keys(conn, sql, sorted({mid for mid, _key in keyed})) & keyed

    states = {mid: State(Status(r.status), r.flags) for mid, r in rows.items()}
    starts = dict(states)
    last_at = {mid: r.last_event_at for mid, r in rows.items()}
    reasons: dict[int, Fact] = {}
    event_rows: list[tuple[Any, ...]] = []
    outcomes: list[Outcome] = []
    late: set[int] = set()
    recorded_at = sql.when(clock.now())
    when = sql.when
    as_json = sql.json
    for fact in facts:
        mid = fact.message_id
        before = states[mid]
        key = fact.dedupe_key
        if key:
            if (mid, key) in seen:
                outcomes.append(Outcome(mid, before.status, before.status, before.flags, False))
                continue
            seen.add((mid, key))
        after = status.apply(before, fact.kind)
        last = last_at[mid]
        if (
            last is not None
            and fact.occurred_at < last
            and (before.status not in (Status.PENDING, Status.SENDING, Status.DEFERRED))
        ):
            late.add(mid)
        else:
            last_at[mid] = fact.occurred_at
        states[mid] = after
        if after.status is not before.status and fact.kind in _REASON_KINDS:
            reasons[mid] = fact
        event_rows.append(
            (
                mid,
                fact.kind.value,
                fact.source,
                when(fact.occurred_at),
                recorded_at,
                after.status.value,
                key,
                fact.reason,
                fact.hard,
                fact.code,
                fact.detail,
                as_json(fact.data),
                fact.inbound_id,
            )
        )
        outcomes.append(Outcome(mid, before.status, after.status, after.flags, True))
    if event_rows:
        sql.insert_many(conn, "events", _EVENT_COLUMNS, event_rows)
    for mid in late:  # an event that happened earlier than what is already applied
        refolded = _refold(conn, mid)
        states[mid] = State(refolded.status, refolded.flags | states[mid].flags)

    updated_at = when(clock.now())
    updates: dict[tuple[str, ...], list[tuple[Any, ...]]] = defaultdict(list)
    converters: dict[tuple[str, ...], list[Any]] = {}
    for mid, state in states.items():
        more = extra.get(mid, _NO_EXTRA) if extra else _NO_EXTRA
        if state == starts[mid] and not more and last_at[mid] == rows[mid].last_event_at:
            continue
        keys = tuple(more)
        convert = converters.get(keys)
        if convert is None:
            convert = converters[keys] = [sql.converter(t.messages.c[k].type) for k in keys]
        reason_fact = reasons.get(mid)
        updates[keys].append(
            (
                mid,
                state.status.value,
                as_json(sorted(state.flags)),
                updated_at,
                when(last_at[mid]),
                reason_fact is None,
                _reason_of(reason_fact),
                reason_fact.detail if reason_fact else None,
                *[f(v) for f, v in zip(convert, more.values(), strict=True)],
            )
        )
    for keys, params in updates.items():  # one statement per set of extra columns
        sql.update_messages(conn, keys, params)
    _leave_storage(
        conn,
        [mid for mid, s in states.items() if rows[mid].has_attachments and _has_left(s.status)],
    )
    _act(conn, facts, rows, policy)
    return outcomes


_EVENT_COLUMNS = (
    "message_id",
    "kind",
    "source",
    "occurred_at",
    "recorded_at",
    "status_after",
    "dedupe_key",
    "reason",
    "hard",
    "code",
    "detail",
    "data",
    "inbound_id",
)


class _Row(NamedTuple):
    id: int
    account_id: int
    status: str
    flags: frozenset[Flag]
    to_addr: str
    category: str
    last_event_at: datetime | None
    has_attachments: bool


_NO_FLAGS: frozenset[Flag] = frozenset()
_NO_EXTRA: dict[str, Any] = {}


def _load_rows(conn: Connection, sql: batch.Dialect, ids: list[int]) -> dict[int, _Row]:
    """The messages' current facts; on PostgreSQL locked until the transaction ends."""
    lock = " FOR UPDATE" if sql.name == "postgresql" else ""
    rows: dict[int, _Row] = {}
    read_when = sql.read_when
    read_json = sql.read_json
    for chunk in batch.chunks(ids):
        where, params = sql.where_in("id", chunk)
        for r in conn.exec_driver_sql(
            "SELECT id, account_id, status, flags, to_addr, category, last_event_at, "
            f"has_attachments FROM messages WHERE {where}{lock}",
            params,
        ):
            flags = read_json(r[3])
            rows[r[0]] = _Row(
                r[0],
                r[1],
                r[2],
                frozenset(map(Flag, flags)) if flags else _NO_FLAGS,
                r[4],
                r[5],
                read_when(r[6]),
                bool(r[7]),
            )
    return rows


def _seen_keys(conn: Connection, sql: batch.Dialect, ids: list[int]) -> set[tuple[int, str]]:
    seen: set[tuple[int, str]] = set()
    for chunk in batch.chunks(ids):
        where, params = sql.where_in("message_id", chunk)
        seen.update(
            (r[0], r[1])
            for r in conn.exec_driver_sql(
                f"SELECT message_id, dedupe_key FROM events WHERE {where} "
                "AND dedupe_key IS NOT NULL",
                params,
            )
        )
    return seen


def _reason_of(fact: Fact | None) -> str | None:
    if fact is None:
        return None
    return "expired" if fact.kind is Kind.EXPIRED else fact.reason


def _has_left(value: Status) -> bool:
    return value not in (Status.PENDING, Status.SENDING, Status.DEFERRED)


def _leave_storage(conn: Connection, message_ids: list[int]) -> None:
    """Attachments leave storage once their message has left (names and sizes stay)."""
    if message_ids:
        conn.execute(
            update(t.attachments)
            .where(t.attachments.c.message_id.in_(message_ids))
            .values(data=None)
        )
        conn.execute(delete(t.bodies).where(t.bodies.c.message_id.in_(message_ids)))


def _act(
    conn: Connection, facts: Sequence[Fact], rows: dict[int, Any], policy: suppression.Policy
) -> None:
    """Suppress addresses: every bounce and complaint is acted on, even one that arrives after
    the headline can no longer change.

    The whole batch's suppressions are added with one :func:`suppression.suppress_many` (in
    the facts' order, so the first fact for an address decides its entry, as before), and the
    soft-bounce counts are read once for every address with an escalating soft bounce."""
    bounced = (Kind.BOUNCED, Kind.EXPIRED)
    escalating = suppression.ESCALATING_REASONS
    candidates = {
        (rows[f.message_id].account_id, rows[f.message_id].to_addr)
        for f in facts
        if f.kind in bounced
        and not f.hard
        and rows[f.message_id].to_addr
        and _reason_of(f) in escalating
    }
    over = suppression.soft_bounces_escalate(conn, policy, candidates) if candidates else set()
    additions: list[suppression.Addition] = []
    for fact in facts:
        row = rows[fact.message_id]
        if not row.to_addr:
            continue
        if fact.kind is Kind.COMPLAINED:
            additions.append(
                suppression.Addition(
                    row.account_id,
                    row.to_addr,
                    reason=suppression.COMPLAINT,
                    detail=fact.detail or "the recipient reported the message as spam",
                    source=fact.source,
                    message_id=fact.message_id,
                )
            )
        elif fact.kind is Kind.UNSUBSCRIBED:
            additions.append(
                suppression.Addition(
                    row.account_id,
                    row.to_addr,
                    reason=suppression.UNSUBSCRIBE,
                    detail=fact.detail or "",
                    source=fact.source,
                    message_id=fact.message_id,
                    category=row.category,
                )
            )
        elif fact.kind in bounced and fact.hard:
            additions.append(
                suppression.Addition(
                    row.account_id,
                    row.to_addr,
                    reason=fact.reason or "bounced",
                    detail=fact.detail or "",
                    source=fact.source,
                    message_id=fact.message_id,
                )
            )
        elif (
            fact.kind in bounced
            and _reason_of(fact) in escalating
            and (row.account_id, row.to_addr) in over
        ):
            additions.append(
                suppression.Addition(
                    row.account_id,
                    row.to_addr,
                    reason=suppression.SOFT_BOUNCES,
                    detail=f"{policy.soft_bounce_limit} or more soft bounces within "
                    f"{policy.soft_bounce_days} days; last: {fact.detail or fact.reason}",
                    source=fact.source,
                    message_id=fact.message_id,
                )
            )
    if additions:
        suppression.suppress_many(conn, additions)


def cancel(
    conn: Connection, account_id: int, message_id: int, *, actor: str, policy: suppression.Policy
) -> Outcome:
    """Cancel a pending message; Conflict (409) once it is no longer pending."""
    claimed = conn.execute(
        update(t.messages)
        .where(
            t.messages.c.id == message_id,
            t.messages.c.account_id == account_id,
            t.messages.c.status == Status.PENDING.value,
        )
        .values(next_attempt_at=None)
    ).rowcount
    if not claimed:
        current = conn.scalar(
            select(t.messages.c.status).where(
                t.messages.c.id == message_id, t.messages.c.account_id == account_id
            )
        )
        if current is None:
            raise errors.NotFound(f"no message {message_id}")
        raise errors.Conflict(f"only a pending message can be cancelled; this one is {current}")
    outcome = record(
        conn,
        [Fact(message_id, Kind.CANCELLED, "user", detail=f"cancelled by {actor}")],
        policy=policy,
    )[0]
    suppression.audit(conn, account_id, actor, "message.cancel", str(message_id))
    return outcome
