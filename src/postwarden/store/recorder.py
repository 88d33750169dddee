"""Record what was learned about messages: store each event, move the headline through the
status machine, and act on it (suppress the address after a hard bounce or a complaint).

The one writer of events. Every source of facts ends here: the dispatcher's SMTP replies,
bounce mails, webhooks, tracking, people's actions, and intake's decisions (a message stored
already dropped, blocked, ...: :func:`record_decisions`, :func:`record_broadcast_decisions`).
Batches keep the dispatcher's writes cheap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, literal, select, update

from postwarden import errors
from postwarden.domain import clock, status
from postwarden.domain.status import Flag, Kind, State, Status
from postwarden.store import batch, suppression, webhooks
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
_NO_EXTRA: dict[str, Any] = {}


def record(
    conn: Connection,
    facts: Sequence[Fact],
    *,
    policy: suppression.Policy,
    extra: dict[int, dict[str, Any]] | None = None,
) -> list[Outcome]:
    """Apply facts in order; ``extra`` adds column values to a message's update (the queue's
    lease release and schedule). Events are idempotent through their dedupe keys.

    The steps, one function each below: read the messages as they stand, fold the facts
    through the status machine, keep an event per new fact, put a fact that happened before
    the last one applied in its place, update the headlines (with ``extra``), let go of the
    attachments of messages that have left, put in the webhook outbox what the account's
    endpoints are to be told (nothing when it has none), suppress what the facts call for.

    The hot statements (the rows' read, the events' insert, the messages' update) are plain
    SQL prepared once per dialect (:mod:`postwarden.store.batch`): this runs for every message
    the dispatcher sends, and SQLAlchemy's statement building and per-row bind processing
    were half of its cost."""
    sql = batch.dialect_of(conn)
    rows = _current(conn, sql, facts)
    folded = _fold(facts, rows, _kept_keys(conn, sql, facts))
    _insert_events(conn, sql, folded.kept)
    for mid in folded.late:
        _refold(conn, folded, mid)
    _update_messages(conn, sql, rows, folded, extra or _NO_EXTRA)
    _purge_attachments(
        conn,
        [mid for mid, s in folded.states.items() if rows[mid].has_attachments and _has_left(s)],
    )
    webhooks.facts_recorded(conn, rows, facts, folded.outcomes)
    _suppress(conn, facts, rows, policy)
    return folded.outcomes


# region reading what is there


def _current(
    conn: Connection, sql: batch.Dialect, facts: Sequence[Fact]
) -> dict[int, batch.Current]:
    """The messages the facts are about, as they stand (locked on PostgreSQL); NotFound when
    one does not exist."""
    ids = sorted({fact.message_id for fact in facts})
    rows = sql.messages_to_record(conn, ids)
    missing = set(ids) - rows.keys()
    if missing:
        raise errors.NotFound(f"no message {min(missing)}")
    return rows


def _kept_keys(conn: Connection, sql: batch.Dialect, facts: Sequence[Fact]) -> set[tuple[int, str]]:
    """The facts' (message, dedupe key) pairs that an event already kept carries."""
    keyed = {(f.message_id, f.dedupe_key) for f in facts if f.dedupe_key}
    if not keyed:
        return set()
    return sql.dedupe_keys(conn, sorted({mid for mid, _key in keyed})) & keyed


# endregion
# region folding: the status machine


@dataclass(slots=True)
class _Folded:
    """The facts folded onto their messages."""

    states: dict[int, State]  # where each headline ends
    last_at: dict[int, datetime | None]  # each message's latest fact applied in order
    reasons: dict[int, Fact] = field(default_factory=dict)  # last to move it with a reason
    kept: list[tuple[Fact, Status]] = field(default_factory=list)  # new facts, status after
    outcomes: list[Outcome] = field(default_factory=list)  # one per fact, in order
    late: set[int] = field(default_factory=set)  # messages to refold from their timeline


def _fold(
    facts: Sequence[Fact], rows: dict[int, batch.Current], seen: set[tuple[int, str]]
) -> _Folded:
    """Each fact through :func:`status.apply`, in order. A fact whose dedupe key was seen
    (kept before, or earlier in ``facts``) changes nothing and keeps no event. A fact that
    happened before the last one applied, on a message that has left, marks the message
    ``late``: its timeline is folded again once the events are stored."""
    folded = _Folded(
        {mid: State(Status(r.status), r.flags) for mid, r in rows.items()},
        {mid: r.last_event_at for mid, r in rows.items()},
    )
    states, last_at = folded.states, folded.last_at
    for fact in facts:
        mid = fact.message_id
        before = states[mid]
        key = fact.dedupe_key
        if key:
            if (mid, key) in seen:
                folded.outcomes.append(
                    Outcome(mid, before.status, before.status, before.flags, False)
                )
                continue
            seen.add((mid, key))
        after = status.apply(before, fact.kind)
        last = last_at[mid]
        if last is not None and fact.occurred_at < last and _has_left(before):
            folded.late.add(mid)
        else:
            last_at[mid] = fact.occurred_at
        states[mid] = after
        if after.status is not before.status and fact.kind in _REASON_KINDS:
            folded.reasons[mid] = fact
        folded.kept.append((fact, after.status))
        folded.outcomes.append(Outcome(mid, before.status, after.status, after.flags, True))
    return folded


def _refold(conn: Connection, folded: _Folded, message_id: int) -> None:
    """Fold a message's whole timeline again, in the order its facts happened (its events
    are stored by now): a late fact takes its place instead of landing on top."""
    kinds = conn.scalars(
        select(t.events.c.kind)
        .where(t.events.c.message_id == message_id)
        .order_by(t.events.c.occurred_at, t.events.c.id)
    )
    refolded = status.fold(Kind(kind) for kind in kinds)
    folded.states[message_id] = State(
        refolded.status, refolded.flags | folded.states[message_id].flags
    )


def _has_left(state: State) -> bool:
    return state.status not in status.IN_FLIGHT


def _reason_of(fact: Fact | None) -> str | None:
    if fact is None:
        return None
    return "expired" if fact.kind is Kind.EXPIRED else fact.reason


# endregion
# region writing: events, headlines, attachments


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


def _insert_events(
    conn: Connection, sql: batch.Dialect, kept: Sequence[tuple[Fact, Status]]
) -> None:
    """One event row per fact kept, with the headline it left its message in."""
    if not kept:
        return
    when = sql.when
    as_json = sql.json
    recorded_at = when(clock.now())
    sql.insert_many(
        conn,
        "events",
        _EVENT_COLUMNS,
        [
            (
                fact.message_id,
                fact.kind.value,
                fact.source,
                when(fact.occurred_at),
                recorded_at,
                after.value,
                fact.dedupe_key,
                fact.reason,
                fact.hard,
                fact.code,
                fact.detail,
                as_json(fact.data),
                fact.inbound_id,
            )
            for fact, after in kept
        ],
    )


def _update_messages(
    conn: Connection,
    sql: batch.Dialect,
    rows: dict[int, batch.Current],
    folded: _Folded,
    extra: dict[int, dict[str, Any]],
) -> None:
    """Write each changed message's headline, flags, reason and last fact time, with its
    ``extra`` columns (the queue's lease release, the next attempt's time): one statement
    per set of extra columns."""
    as_json = sql.json
    when = sql.when
    updated_at = when(clock.now())
    updates: dict[tuple[str, ...], list[tuple[Any, ...]]] = defaultdict(list)
    converters: dict[tuple[str, ...], list[Any]] = {}
    for mid, state in folded.states.items():
        row = rows[mid]
        more = extra.get(mid, _NO_EXTRA)
        if (
            state.status == row.status
            and state.flags == row.flags
            and not more
            and folded.last_at[mid] == row.last_event_at
        ):
            continue
        keys = tuple(more)
        convert = converters.get(keys)
        if convert is None:
            convert = converters[keys] = [sql.converter(t.messages.c[k].type) for k in keys]
        reason_fact = folded.reasons.get(mid)
        updates[keys].append(
            (
                mid,
                state.status.value,
                as_json(sorted(state.flags)),
                updated_at,
                when(folded.last_at[mid]),
                reason_fact is None,
                _reason_of(reason_fact),
                reason_fact.detail if reason_fact else None,
                *[f(v) for f, v in zip(convert, more.values(), strict=True)],
            )
        )
    for keys, params in updates.items():
        sql.update_messages(conn, keys, params)


def _purge_attachments(conn: Connection, message_ids: list[int]) -> None:
    """Attachments leave storage once their message has left (names and sizes stay), and so
    do the message's built bytes."""
    if message_ids:
        conn.execute(
            update(t.attachments)
            .where(t.attachments.c.message_id.in_(message_ids))
            .values(data=None)
        )
        conn.execute(delete(t.bodies).where(t.bodies.c.message_id.in_(message_ids)))


# endregion
# region suppression: what bounces, complaints and unsubscribes call for


def _suppress(
    conn: Connection,
    facts: Sequence[Fact],
    rows: dict[int, batch.Current],
    policy: suppression.Policy,
) -> None:
    """Suppress addresses: every bounce and complaint is acted on, even one that arrives after
    the headline can no longer change.

    The whole batch's suppressions are added with one :func:`suppression.suppress_many` (in
    the facts' order, so the first fact for an address decides its entry), and the
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


# endregion
# region intake's decisions: messages stored in the status intake decided


INTAKE = "intake"
"""The source of intake's decisions."""


def decision(message_id: int, decided: Status, detail: str | None) -> Fact:
    """The fact of an intake decision (``decided`` is one of :data:`status.DECISIONS`)."""
    return Fact(
        message_id,
        status.DECISIONS[decided],
        INTAKE,
        reason=status.DECISION_REASONS[decided],
        detail=detail,
    )


def record_decisions(conn: Connection, facts: Sequence[Fact]) -> None:
    """Keep the events of intake's decisions about messages just stored in the status each
    decides (see :func:`decision`). A new message has no events, no flags, no suppression to
    act on and no lock to take: folding from a new message's state is all there is, so none
    of :func:`record`'s reads are needed."""
    new = State()
    kept = []
    for fact in facts:
        after = status.apply(new, fact.kind).status
        if after not in status.DECISIONS:
            raise ValueError(f"{fact.kind.value} is not an intake decision")
        kept.append((fact, after))
    _insert_events(conn, batch.dialect_of(conn), kept)


def record_broadcast_decisions(conn: Connection, broadcast_id: int) -> None:
    """:func:`record_decisions` for every message of a broadcast just stored that is not
    pending, in message order, from the stored rows themselves (one ``INSERT ... SELECT``
    for 100,000 recipients): each decision's event kind has its status's name, and its
    reason and detail are the message's (:data:`status.DECISIONS`)."""
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
                m.c.status,  # the decision's event kind
                literal(INTAKE, ev.c.source.type),
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


# endregion


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
