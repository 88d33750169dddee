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
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, tuple_, update

from postwarden import clock, errors, status, suppression
from postwarden.status import Flag, Kind, State, Status
from postwarden.store import tables as t

_FIELDS = (
    t.messages.c.id,
    t.messages.c.account_id,
    t.messages.c.status,
    t.messages.c.flags,
    t.messages.c.to_addr,
    t.messages.c.category,
    t.messages.c.last_event_at,
    t.messages.c.has_attachments,
)


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
    lease and schedule). Events are idempotent through their dedupe keys."""
    ids = sorted({fact.message_id for fact in facts})
    query = select(*_FIELDS).where(t.messages.c.id.in_(ids))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    rows = {row.id: row for row in conn.execute(query)}
    missing = set(ids) - rows.keys()
    if missing:
        raise errors.NotFound(f"no message {min(missing)}")

    keyed = [(f.message_id, f.dedupe_key) for f in facts if f.dedupe_key]
    seen: set[tuple[int, str]] = set()
    if keyed:
        seen = {
            (row.message_id, row.dedupe_key)
            for row in conn.execute(
                select(t.events.c.message_id, t.events.c.dedupe_key).where(
                    tuple_(t.events.c.message_id, t.events.c.dedupe_key).in_(keyed)
                )
            )
        }

    states = {
        mid: State(Status(r.status), frozenset(map(Flag, r.flags))) for mid, r in rows.items()
    }
    starts = dict(states)
    last_at = {mid: r.last_event_at for mid, r in rows.items()}
    reasons: dict[int, Fact] = {}
    event_rows: list[dict[str, Any]] = []
    outcomes: list[Outcome] = []
    late: set[int] = set()
    for fact in facts:
        mid = fact.message_id
        before = states[mid]
        if fact.dedupe_key and (mid, fact.dedupe_key) in seen:
            outcomes.append(Outcome(mid, before.status, before.status, before.flags, False))
            continue
        if fact.dedupe_key:
            seen.add((mid, fact.dedupe_key))
        after = status.apply(before, fact.kind)
        if (
            last_at[mid] is not None
            and fact.occurred_at < last_at[mid]
            and (before.status not in (Status.PENDING, Status.SENDING, Status.DEFERRED))
        ):
            late.add(mid)
        else:
            last_at[mid] = fact.occurred_at
        states[mid] = after
        if after.moved(before) and fact.kind in _REASON_KINDS:
            reasons[mid] = fact
        event_rows.append(
            {
                "message_id": mid,
                "kind": fact.kind.value,
                "source": fact.source,
                "occurred_at": fact.occurred_at,
                "recorded_at": clock.now(),
                "status_after": after.status.value,
                "dedupe_key": fact.dedupe_key,
                "reason": fact.reason,
                "hard": fact.hard,
                "code": fact.code,
                "detail": fact.detail,
                "data": fact.data,
                "inbound_id": fact.inbound_id,
            }
        )
        outcomes.append(Outcome(mid, before.status, after.status, after.flags, True))
    if event_rows:
        conn.execute(insert(t.events), event_rows)
    for mid in late:  # an event that happened earlier than what is already applied
        refolded = _refold(conn, mid)
        states[mid] = State(refolded.status, refolded.flags | states[mid].flags)

    now = clock.now()
    updates: list[dict[str, Any]] = []
    for mid, state in states.items():
        more = (extra or {}).get(mid, {})
        if state == starts[mid] and not more and last_at[mid] == rows[mid].last_event_at:
            continue
        reason_fact = reasons.get(mid)
        values: dict[str, Any] = {
            "b_id": mid,
            "status": state.status.value,
            "flags": sorted(state.flags),
            "updated_at": now,
            "last_event_at": last_at[mid],
            "reason": _reason_of(reason_fact),
            "detail": reason_fact.detail if reason_fact else None,
            "keep_reason": reason_fact is None,
        }
        values.update({"x_" + key: value for key, value in more.items()})
        updates.append(values)
    _write_updates(conn, updates)
    _leave_storage(
        conn,
        [mid for mid, s in states.items() if rows[mid].has_attachments and _has_left(s.status)],
    )
    _act(conn, facts, rows, policy)
    return outcomes


def _reason_of(fact: Fact | None) -> str | None:
    if fact is None:
        return None
    return "expired" if fact.kind is Kind.EXPIRED else fact.reason


def _has_left(value: Status) -> bool:
    return value not in (Status.PENDING, Status.SENDING, Status.DEFERRED)


def _write_updates(conn: Connection, updates: list[dict[str, Any]]) -> None:
    groups: dict[tuple[bool, tuple[str, ...]], list[dict[str, Any]]] = defaultdict(list)
    for values in updates:
        keep = values.pop("keep_reason")
        extra_keys = tuple(sorted(k for k in values if k.startswith("x_")))
        groups[(keep, extra_keys)].append(values)
    for (keep, extra_keys), batch in groups.items():
        assign: dict[str, Any] = {
            "status": bindparam("status"),
            "flags": bindparam("flags"),
            "updated_at": bindparam("updated_at"),
            "last_event_at": bindparam("last_event_at"),
        }
        if not keep:
            assign["reason"] = bindparam("reason")
            assign["detail"] = bindparam("detail")
        for key in extra_keys:
            assign[key[2:]] = bindparam(key)
        statement = update(t.messages).where(t.messages.c.id == bindparam("b_id")).values(assign)
        conn.execute(statement, batch)


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
    the headline can no longer change."""
    for fact in facts:
        row = rows[fact.message_id]
        if not row.to_addr:
            continue
        if fact.kind is Kind.COMPLAINED:
            suppression.suppress(
                conn,
                row.account_id,
                row.to_addr,
                reason=suppression.COMPLAINT,
                detail=fact.detail or "the recipient reported the message as spam",
                source=fact.source,
                message_id=fact.message_id,
            )
        elif fact.kind is Kind.UNSUBSCRIBED:
            suppression.suppress(
                conn,
                row.account_id,
                row.to_addr,
                reason=suppression.UNSUBSCRIBE,
                detail=fact.detail or "",
                source=fact.source,
                message_id=fact.message_id,
                category=row.category,
            )
        elif fact.kind in (Kind.BOUNCED, Kind.EXPIRED) and fact.hard:
            suppression.suppress(
                conn,
                row.account_id,
                row.to_addr,
                reason=fact.reason or "bounced",
                detail=fact.detail or "",
                source=fact.source,
                message_id=fact.message_id,
            )
        elif (
            fact.kind in (Kind.BOUNCED, Kind.EXPIRED)
            and (_reason_of(fact) in suppression.ESCALATING_REASONS)
            and suppression.soft_bounce_escalates(conn, policy, row.account_id, row.to_addr)
        ):
            suppression.suppress(
                conn,
                row.account_id,
                row.to_addr,
                reason=suppression.SOFT_BOUNCES,
                detail=f"{policy.soft_bounce_limit} or more soft bounces within "
                f"{policy.soft_bounce_days} days; last: {fact.detail or fact.reason}",
                source=fact.source,
                message_id=fact.message_id,
            )


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
