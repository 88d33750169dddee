"""Webhooks out: each account's endpoints, the outbox of what is to be sent to them, and the
log of every attempt.

The outbox is written where the facts are: :func:`facts_recorded` (called by
``recorder.record`` for the messages it changed), :func:`suppressions_added` and
:func:`suppression_removed` (called by :mod:`postwarden.store.suppression`) add one row per
event and subscribed endpoint, in the transaction that records the event, with one multi-row
insert per batch. So a crash loses nothing: the event and its webhooks commit together, and the
sender (``outbound/webhooks``) delivers them at least once, with the same ``webhook-id`` on
every retry. An account without endpoints costs nothing: the recorder reads whether the
account has any with the messages themselves.

Delivery states: ``pending`` (due at ``next_attempt_at``), ``delivered``, ``failed`` (the dead
letters: retries ran out, or the endpoint is disabled). A replay makes a row pending again.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from postwarden import errors
from postwarden.domain import clock
from postwarden.domain.status import Flag, Kind
from postwarden.store import batch
from postwarden.store import tables as t

if TYPE_CHECKING:  # the recorder imports this module
    from postwarden.store.recorder import Fact, Outcome

# region event types

STATUS_CHANGED = "message.status_changed"
BOUNCED_AFTER_DELIVERY = "message.bounced_after_delivery"
COMPLAINED = "message.complained"
OPENED = "message.opened"
CLICKED = "message.clicked"
SUPPRESSION_ADDED = "suppression.added"
SUPPRESSION_REMOVED = "suppression.removed"
SMS_RECEIPT = "sms.receipt"

EVENT_TYPES: dict[str, str] = {
    STATUS_CHANGED: "A message's status changed (old and new status, reason, hard, code).",
    BOUNCED_AFTER_DELIVERY: "A message already delivered bounced after all: the recipient "
    "did not get it, and the address is suppressed if the bounce is hard.",
    COMPLAINED: "The recipient reported a message as spam (the address is suppressed).",
    OPENED: "A message was opened (``machine``: by a mail client's proxy or a scanner).",
    CLICKED: "A tracked link was followed (``machine``: by a link scanner, not a person).",
    SUPPRESSION_ADDED: "An address was put on the suppression list.",
    SUPPRESSION_REMOVED: "An address was taken off the suppression list (marked as valid).",
    SMS_RECEIPT: "An SMS provider's receipt about a text (delivered, failed, expired...).",
}
"""Every event type an endpoint can subscribe to, and what it means."""

RECEIPT_KINDS = frozenset(
    {Kind.RELAYED, Kind.DELIVERED, Kind.BOUNCED, Kind.EXPIRED, Kind.FAILED, Kind.DELAYED}
)
ATTEMPT_KEY = "attempt:"
"""An SMS receipt is a fact of one of :data:`RECEIPT_KINDS` about a text (``channel`` sms) that
is not the dispatcher's own verdict on an attempt (whose dedupe key starts with this): the
SMS channel's receipts are recorded like any other fact and go out as ``sms.receipt``."""

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
STATES = (PENDING, DELIVERED, FAILED)

# endregion
# region endpoints


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: int
    account_id: int
    url: str
    description: str
    event_types: list[str]  # empty: every type
    enabled: bool
    disabled_at: datetime | None
    disabled_reason: str | None
    failing_since: datetime | None
    failures: int
    created_at: datetime
    secret: str
    previous_secret: str | None
    previous_expires_at: datetime | None

    def takes(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def check_event_types(event_types: Iterable[str]) -> list[str]:
    wanted = sorted(set(event_types))
    unknown = [e for e in wanted if e not in EVENT_TYPES]
    if unknown:
        raise errors.InvalidInput(
            f"unknown event type {unknown[0]!r}; one of " + ", ".join(EVENT_TYPES)
        )
    return wanted


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        row.id,
        row.account_id,
        row.url,
        row.description,
        list(row.event_types or []),
        row.enabled,
        row.disabled_at,
        row.disabled_reason,
        row.failing_since,
        row.failures,
        row.created_at,
        row.secret,
        row.previous_secret,
        row.previous_expires_at,
    )


def create_endpoint(
    conn: Connection,
    account_id: int,
    url: str,
    *,
    event_types: Iterable[str] = (),
    description: str = "",
) -> Endpoint:
    """Add an endpoint (its URL checked by the caller: see ``outbound.webhooks.net``)."""
    endpoint_id = conn.scalar(
        insert(t.webhook_endpoints)
        .values(
            account_id=account_id,
            url=url,
            description=description,
            event_types=check_event_types(event_types),
            secret=new_secret(),
            enabled=True,
            failures=0,
            created_at=clock.now(),
        )
        .returning(t.webhook_endpoints.c.id)
    )
    assert endpoint_id is not None
    return get_endpoint(conn, account_id, endpoint_id)


def list_endpoints(conn: Connection, account_id: int) -> list[Endpoint]:
    e = t.webhook_endpoints
    rows = conn.execute(select(e).where(e.c.account_id == account_id).order_by(e.c.id))
    return [_endpoint(r) for r in rows]


def get_endpoint(conn: Connection, account_id: int, endpoint_id: int) -> Endpoint:
    e = t.webhook_endpoints
    row = conn.execute(select(e).where(e.c.id == endpoint_id, e.c.account_id == account_id)).first()
    if row is None:
        raise errors.NotFound(f"no webhook endpoint {endpoint_id}")
    return _endpoint(row)


def update_endpoint(
    conn: Connection,
    account_id: int,
    endpoint_id: int,
    *,
    url: str | None = None,
    event_types: Iterable[str] | None = None,
    description: str | None = None,
    enabled: bool | None = None,
    actor: str = "api",
) -> Endpoint:
    """Change an endpoint. Enabling one starts it afresh (no failures counted); disabling one
    by hand turns what is pending for it into dead letters, as a disable for failing does."""
    current = get_endpoint(conn, account_id, endpoint_id)
    values: dict[str, Any] = {}
    if url is not None:
        values["url"] = url
    if event_types is not None:
        values["event_types"] = check_event_types(event_types)
    if description is not None:
        values["description"] = description
    if enabled is True and not current.enabled:
        values |= {"enabled": True, "disabled_at": None, "disabled_reason": None}
        values |= {"failing_since": None, "failures": 0}
    if values:
        e = t.webhook_endpoints
        conn.execute(update(e).where(e.c.id == endpoint_id).values(values))
    if enabled is False and current.enabled:
        _disable(conn, endpoint_id, f"disabled by {actor}", clock.now())
    return get_endpoint(conn, account_id, endpoint_id)


def rotate_secret(
    conn: Connection, account_id: int, endpoint_id: int, *, overlap: timedelta
) -> Endpoint:
    """A new signing secret; the one it replaces still signs (a second signature in
    ``webhook-signature``) for ``overlap``, so the receiver can switch without losing one."""
    current = get_endpoint(conn, account_id, endpoint_id)
    conn.execute(
        update(t.webhook_endpoints)
        .where(t.webhook_endpoints.c.id == endpoint_id)
        .values(
            secret=new_secret(),
            previous_secret=current.secret if overlap > timedelta(0) else None,
            previous_expires_at=clock.now() + overlap if overlap > timedelta(0) else None,
        )
    )
    return get_endpoint(conn, account_id, endpoint_id)


def delete_endpoint(conn: Connection, account_id: int, endpoint_id: int) -> None:
    get_endpoint(conn, account_id, endpoint_id)
    conn.execute(delete(t.webhook_endpoints).where(t.webhook_endpoints.c.id == endpoint_id))


def signing_secrets(endpoint: Endpoint, now: datetime) -> list[str]:
    """The secrets a webhook is signed with now: the current one, and the previous one during
    its overlap."""
    found = [endpoint.secret]
    expires = endpoint.previous_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        found.append(endpoint.previous_secret)
    return found


def disabled_endpoints(conn: Connection, account_id: int) -> list[Endpoint]:
    """The account's endpoints disabled for failing (or by hand): the dashboard's notice."""
    e = t.webhook_endpoints
    rows = conn.execute(
        select(e).where(e.c.account_id == account_id, e.c.enabled.is_(False)).order_by(e.c.id)
    )
    return [_endpoint(r) for r in rows]


# endregion
# region the outbox: what the recorder and the suppression list add


@dataclass(frozen=True, slots=True)
class Event:
    """One thing to tell an account's endpoints."""

    account_id: int
    type: str
    at: datetime
    data: dict[str, Any]


_DELIVERY_COLUMNS = (
    "endpoint_id",
    "webhook_id",
    "event_type",
    "payload",
    "created_at",
    "state",
    "attempts",
    "retry_since",
    "next_attempt_at",
    "last_error",
    "finished_at",
)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def payload(event: Event) -> str:
    """The body sent (and signed): ``{"type", "timestamp", "data"}`` as the Standard Webhooks
    specification suggests."""
    body = {"type": event.type, "timestamp": event.at.isoformat(), "data": event.data}
    return json.dumps(body, separators=(",", ":"), default=_json_default, ensure_ascii=False)


def new_webhook_id() -> str:
    return "msg_" + secrets.token_hex(12)


def enqueue(conn: Connection, events: Sequence[Event]) -> int:
    """Add one outbox row per event and endpoint of its account that takes its type (one
    multi-row insert); rows for a disabled endpoint are dead letters from the start, kept for
    a replay once it works again. Returns how many rows were added."""
    if not events:
        return 0
    by_account = _endpoints_of(conn, {e.account_id for e in events})
    if not by_account:
        return 0
    sql = batch.dialect_of(conn)
    when = sql.when
    now = clock.now()
    stamp = when(now)
    rows: list[tuple[Any, ...]] = []
    for event in events:
        body: str | None = None
        for endpoint in by_account.get(event.account_id, ()):
            if not endpoint.takes(event.type):
                continue
            body = body if body is not None else payload(event)
            live = endpoint.enabled
            rows.append(
                (
                    endpoint.id,
                    new_webhook_id(),
                    event.type,
                    body,
                    stamp,
                    PENDING if live else FAILED,
                    0,
                    stamp,
                    stamp if live else None,
                    None if live else "not sent: the endpoint is disabled",
                    None if live else stamp,
                )
            )
    sql.insert_many(conn, "webhook_deliveries", _DELIVERY_COLUMNS, rows)
    return len(rows)


def _endpoints_of(conn: Connection, account_ids: set[int]) -> dict[int, list[Endpoint]]:
    e = t.webhook_endpoints
    found: dict[int, list[Endpoint]] = defaultdict(list)
    for row in conn.execute(select(e).where(e.c.account_id.in_(sorted(account_ids)))):
        found[row.account_id].append(_endpoint(row))
    return found


def facts_recorded(
    conn: Connection,
    rows: Mapping[int, batch.Current],
    facts: Sequence[Fact],
    outcomes: Sequence[Outcome],
) -> None:
    """The recorder's hook: the webhooks its facts call for, for the messages whose account
    has endpoints (``rows[...].webhooks``, read with the messages). Nothing at all to do for
    the others."""
    if not any(rows[f.message_id].webhooks for f in facts):
        return
    wanted = [
        (fact, outcome)
        for fact, outcome in zip(facts, outcomes, strict=True)
        if outcome.recorded and rows[fact.message_id].webhooks
    ]
    if not wanted:
        return
    about = _messages(conn, sorted({fact.message_id for fact, _o in wanted}))
    flags: dict[int, frozenset[Flag]] = {}
    events: list[Event] = []
    for fact, outcome in wanted:
        mid = fact.message_id
        row = rows[mid]
        before = flags.get(mid, row.flags)
        flags[mid] = outcome.flags
        message = about[mid]
        base = {
            "message_id": mid,
            "channel": message["channel"],
            "to": row.to_addr,
            "category": row.category,
            "broadcast_id": message["broadcast_id"],
            "metadata": message["metadata"] or {},
            "status": outcome.after.value,
            "previous_status": outcome.before.value,
            "flags": sorted(f.value for f in outcome.flags),
            "event": fact.kind.value,
            "source": fact.source,
            "occurred_at": fact.occurred_at,
            "reason": "expired" if fact.kind is Kind.EXPIRED else fact.reason,
            "hard": fact.hard,
            "code": fact.code,
            "detail": fact.detail,
        }

        types: list[tuple[str, dict[str, Any]]] = []
        if outcome.after is not outcome.before:
            types.append((STATUS_CHANGED, base))
        if Flag.BOUNCED_AFTER_DELIVERY in outcome.flags - before:
            types.append((BOUNCED_AFTER_DELIVERY, base))
        if fact.kind is Kind.COMPLAINED:
            types.append((COMPLAINED, base))
        elif fact.kind in (Kind.OPENED, Kind.CLICKED):
            engagement = {"machine": bool(fact.data.get("machine")), "link": fact.data.get("link")}
            types.append((OPENED if fact.kind is Kind.OPENED else CLICKED, base | engagement))
        if (
            message["channel"] == "sms"
            and fact.kind in RECEIPT_KINDS
            and not (fact.dedupe_key or "").startswith(ATTEMPT_KEY)
        ):
            types.append((SMS_RECEIPT, base))
        events.extend(Event(row.account_id, kind, fact.occurred_at, data) for kind, data in types)
    enqueue(conn, events)


def _messages(conn: Connection, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    m = t.messages
    found: dict[int, dict[str, Any]] = {}
    for chunk in batch.chunks(ids):
        for row in conn.execute(
            select(m.c.id, m.c.channel, m.c.broadcast_id, m.c.metadata).where(m.c.id.in_(chunk))
        ):
            found[row.id] = dict(row._mapping)
    return found


def suppressions_added(conn: Connection, added: Sequence[Any]) -> None:
    """Webhooks for suppression entries just added (``suppression.Addition``)."""
    if not added:
        return
    now = clock.now()
    enqueue(
        conn,
        [
            Event(
                a.account_id,
                SUPPRESSION_ADDED,
                now,
                {
                    "address": a.address,
                    "category": a.category,
                    "reason": a.reason,
                    "detail": a.detail,
                    "source": a.source,
                    "message_id": a.message_id,
                },
            )
            for a in added
        ],
    )


def suppression_removed(
    conn: Connection, account_id: int, address: str, category: str | None, actor: str
) -> None:
    enqueue(
        conn,
        [
            Event(
                account_id,
                SUPPRESSION_REMOVED,
                clock.now(),
                {"address": address, "category": category, "actor": actor},
            )
        ],
    )


# endregion
# region the sender's side: claims with leases, results


def anything_due(conn: Connection, now: datetime) -> bool:
    """Whether any delivery is due (read on a reader: an idle sender never takes SQLite's
    write lock, which the dispatcher's records wait for)."""
    d = t.webhook_deliveries
    found = conn.scalar(
        select(d.c.id).where(d.c.state == PENDING, d.c.next_attempt_at <= now).limit(1)
    )
    return found is not None


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    endpoint_id: int
    webhook_id: str
    event_type: str
    payload: str
    attempts: int  # this attempt's number
    retry_since: datetime
    url: str
    secrets: list[str]


def claim(
    conn: Connection,
    *,
    owner: str,
    limit: int,
    per_endpoint: int,
    lease: timedelta,
    now: datetime,
    busy: Iterable[int] = (),
) -> list[Claimed]:
    """Take up to ``limit`` due deliveries, at most ``per_endpoint`` of any one endpoint and
    none of the ``busy`` ones (their own concurrency is used up), oldest first: a dead
    endpoint's backlog never fills a claim. Leased to ``owner``; on PostgreSQL the rows are
    taken ``FOR UPDATE SKIP LOCKED`` so several senders share the outbox."""
    d, e = t.webhook_deliveries, t.webhook_endpoints
    due = [
        d.c.state == PENDING,
        d.c.next_attempt_at <= now,
        or_(d.c.lease_until.is_(None), d.c.lease_until < now),
    ]
    busy = sorted(set(busy))
    ranked = (
        select(
            d.c.id,
            d.c.next_attempt_at,
            func.row_number()
            .over(partition_by=d.c.endpoint_id, order_by=(d.c.next_attempt_at, d.c.id))
            .label("rank"),
        )
        .join(e, e.c.id == d.c.endpoint_id)
        .where(*due, e.c.enabled.is_(True), *([d.c.endpoint_id.not_in(busy)] if busy else []))
        .subquery()
    )
    candidates = (
        select(ranked.c.id)
        .where(ranked.c.rank <= per_endpoint)
        .order_by(ranked.c.next_attempt_at)
        .limit(limit)
    )
    locked = (
        select(d.c.id)
        .where(d.c.id.in_(candidates.scalar_subquery()), *due)
        .with_for_update(skip_locked=True)
    )
    claimed = conn.execute(
        update(d)
        .where(d.c.id.in_(locked.scalar_subquery()))
        .values(lease_until=now + lease, lease_owner=owner, attempts=d.c.attempts + 1)
        .returning(
            d.c.id,
            d.c.endpoint_id,
            d.c.webhook_id,
            d.c.event_type,
            d.c.payload,
            d.c.attempts,
            d.c.retry_since,
        )
    ).all()
    if not claimed:
        return []
    endpoints = {
        r.id: _endpoint(r)
        for r in conn.execute(select(e).where(e.c.id.in_({c.endpoint_id for c in claimed})))
    }
    return [
        Claimed(
            c.id,
            c.endpoint_id,
            c.webhook_id,
            c.event_type,
            c.payload,
            c.attempts,
            c.retry_since,
            endpoints[c.endpoint_id].url,
            signing_secrets(endpoints[c.endpoint_id], now),
        )
        for c in sorted(claimed, key=lambda c: c.id)
    ]


@dataclass(frozen=True, slots=True)
class Result:
    """What became of one attempt, and what follows: ``next_at`` (try again then), or None
    (delivered if ``ok``, else a dead letter)."""

    delivery_id: int
    endpoint_id: int
    number: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    response: str
    error: str | None
    ok: bool
    next_at: datetime | None


_ATTEMPT_COLUMNS = (
    "delivery_id",
    "number",
    "started_at",
    "duration_ms",
    "status_code",
    "response",
    "error",
)


@dataclass(frozen=True, slots=True)
class DisablePolicy:
    """An endpoint is disabled once every attempt for ``after`` has failed, and at least
    ``failures`` of them in a row."""

    after: timedelta = timedelta(days=3)
    failures: int = 20


def finish(
    conn: Connection, results: Sequence[Result], *, policy: DisablePolicy, now: datetime
) -> list[int]:
    """Record attempts: their log rows, each delivery's state, each endpoint's run of
    failures; disable the endpoints that keep failing (their pending deliveries become dead
    letters). Returns the ids of the endpoints disabled."""
    if not results:
        return []
    sql = batch.dialect_of(conn)
    when = sql.when
    sql.insert_many(
        conn,
        "webhook_attempts",
        _ATTEMPT_COLUMNS,
        [
            (
                r.delivery_id,
                r.number,
                when(r.started_at),
                r.duration_ms,
                r.status_code,
                r.response,
                r.error,
            )
            for r in results
        ],
    )
    stamp = when(now)
    sql.update_many(
        conn,
        "webhook_deliveries",
        ("state", "next_attempt_at", "lease_until", "lease_owner", "last_error", "finished_at"),
        [
            (
                r.delivery_id,
                DELIVERED if r.ok else PENDING if r.next_at is not None else FAILED,
                when(r.next_at),
                None,
                None,
                None if r.ok else _summary(r),
                stamp if r.ok or r.next_at is None else None,
            )
            for r in results
        ],
    )
    return _endpoint_health(conn, results, policy, now)


def _summary(r: Result) -> str:
    if r.status_code is not None:
        return f"HTTP {r.status_code}" + (f": {r.error}" if r.error else "")
    return r.error or "failed"


def _endpoint_health(
    conn: Connection, results: Sequence[Result], policy: DisablePolicy, now: datetime
) -> list[int]:
    e = t.webhook_endpoints
    by_endpoint: dict[int, list[Result]] = defaultdict(list)
    for r in results:
        by_endpoint[r.endpoint_id].append(r)
    disabled: list[int] = []
    for endpoint_id, done in sorted(by_endpoint.items()):
        done.sort(key=lambda r: r.started_at)
        last_ok = max((i for i, r in enumerate(done) if r.ok), default=None)
        failed_after = done[last_ok + 1 :] if last_ok is not None else done
        if last_ok is not None and not failed_after:
            conn.execute(
                update(e).where(e.c.id == endpoint_id).values(failing_since=None, failures=0)
            )
            continue
        if last_ok is not None:
            values: dict[str, Any] = {
                "failing_since": failed_after[0].started_at,
                "failures": len(failed_after),
            }
        else:
            values = {
                "failing_since": func.coalesce(e.c.failing_since, failed_after[0].started_at),
                "failures": e.c.failures + len(failed_after),
            }
        row = conn.execute(
            update(e)
            .where(e.c.id == endpoint_id)
            .values(values)
            .returning(e.c.failing_since, e.c.failures, e.c.enabled)
        ).first()
        if (
            row is not None
            and row.enabled
            and row.failures >= policy.failures
            and row.failing_since <= now - policy.after
        ):
            _disable(
                conn,
                endpoint_id,
                f"every attempt failed since {row.failing_since:%Y-%m-%d %H:%M} UTC "
                f"({row.failures} in a row); last: {_summary(failed_after[-1])}",
                now,
            )
            disabled.append(endpoint_id)
    return disabled


def _disable(conn: Connection, endpoint_id: int, reason: str, now: datetime) -> None:
    e, d = t.webhook_endpoints, t.webhook_deliveries
    conn.execute(
        update(e)
        .where(e.c.id == endpoint_id)
        .values(enabled=False, disabled_at=now, disabled_reason=reason)
    )
    conn.execute(
        update(d)
        .where(d.c.endpoint_id == endpoint_id, d.c.state == PENDING)
        .values(
            state=FAILED,
            next_attempt_at=None,
            lease_until=None,
            lease_owner=None,
            finished_at=now,
            last_error=f"not sent: the endpoint was disabled ({reason})",
        )
    )


def release(conn: Connection, owner: str, ids: Sequence[int], now: datetime) -> None:
    """Give back claimed deliveries never attempted (the sender is stopping)."""
    d = t.webhook_deliveries
    if ids:
        conn.execute(
            update(d)
            .where(d.c.id.in_(list(ids)), d.c.lease_owner == owner, d.c.state == PENDING)
            .values(
                lease_until=None, lease_owner=None, next_attempt_at=now, attempts=d.c.attempts - 1
            )
        )


# endregion
# region reading: deliveries, attempts, dead letters; replays


_DELIVERY_LIST = (
    t.webhook_deliveries.c.id,
    t.webhook_deliveries.c.endpoint_id,
    t.webhook_deliveries.c.webhook_id,
    t.webhook_deliveries.c.event_type,
    t.webhook_deliveries.c.created_at,
    t.webhook_deliveries.c.state,
    t.webhook_deliveries.c.attempts,
    t.webhook_deliveries.c.next_attempt_at,
    t.webhook_deliveries.c.last_error,
    t.webhook_deliveries.c.finished_at,
    t.webhook_endpoints.c.url,
)


def _of_account(account_id: int) -> Any:
    return t.webhook_endpoints.c.account_id == account_id


def list_deliveries(
    conn: Connection,
    account_id: int,
    *,
    endpoint_id: int | None = None,
    state: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The account's deliveries, newest first (``state="failed"``: the dead letters)."""
    d, e = t.webhook_deliveries, t.webhook_endpoints
    if state is not None and state not in STATES:
        raise errors.InvalidInput(f"unknown state {state!r}; one of {', '.join(STATES)}")
    query = (
        select(*_DELIVERY_LIST).join(e, e.c.id == d.c.endpoint_id).where(_of_account(account_id))
    )
    if endpoint_id is not None:
        query = query.where(d.c.endpoint_id == endpoint_id)
    if state is not None:
        query = query.where(d.c.state == state)
    if since is not None:
        query = query.where(d.c.created_at >= since)
    if until is not None:
        query = query.where(d.c.created_at < until)
    if before_id is not None:
        query = query.where(d.c.id < before_id)
    rows = conn.execute(query.order_by(d.c.id.desc()).limit(limit))
    return [dict(r._mapping) for r in rows]


def get_delivery(conn: Connection, account_id: int, delivery_id: int) -> dict[str, Any]:
    """One delivery with its payload and every attempt, oldest first."""
    d, e, a = t.webhook_deliveries, t.webhook_endpoints, t.webhook_attempts
    row = conn.execute(
        select(*_DELIVERY_LIST, d.c.payload)
        .join(e, e.c.id == d.c.endpoint_id)
        .where(d.c.id == delivery_id, _of_account(account_id))
    ).first()
    if row is None:
        raise errors.NotFound(f"no webhook delivery {delivery_id}")
    item = dict(row._mapping)
    item["payload"] = json.loads(item["payload"])
    item["attempt_log"] = [
        dict(r._mapping)
        for r in conn.execute(
            select(
                a.c.number,
                a.c.started_at,
                a.c.duration_ms,
                a.c.status_code,
                a.c.response,
                a.c.error,
            )
            .where(a.c.delivery_id == delivery_id)
            .order_by(a.c.id)
        )
    ]
    return item


def counts(conn: Connection, account_id: int) -> dict[int, dict[str, int]]:
    """Per endpoint, how many deliveries are in each state."""
    d, e = t.webhook_deliveries, t.webhook_endpoints
    found: dict[int, dict[str, int]] = defaultdict(dict)
    for endpoint_id, state, n in conn.execute(
        select(d.c.endpoint_id, d.c.state, func.count())
        .join(e, e.c.id == d.c.endpoint_id)
        .where(_of_account(account_id))
        .group_by(d.c.endpoint_id, d.c.state)
    ):
        found[endpoint_id][state] = n
    return found


def _replay(conn: Connection, condition: Any) -> int:
    now = clock.now()
    d = t.webhook_deliveries
    return conn.execute(
        update(d)
        .where(condition)
        .values(
            state=PENDING,
            next_attempt_at=now,
            retry_since=now,
            lease_until=None,
            lease_owner=None,
            finished_at=None,
        )
    ).rowcount


def replay(conn: Connection, account_id: int, delivery_id: int) -> None:
    """Send one delivery again (whatever its state), with its own ``webhook-id``: a receiver
    that already has it can tell."""
    get_delivery(conn, account_id, delivery_id)
    _replay(conn, t.webhook_deliveries.c.id == delivery_id)


def replay_range(
    conn: Connection,
    account_id: int,
    *,
    since: datetime,
    until: datetime,
    endpoint_id: int | None = None,
    failed_only: bool = True,
) -> int:
    """Send again the deliveries created in [since, until) (only the dead letters, unless
    ``failed_only`` is False), of one endpoint or all the account's. Returns how many."""
    if since >= until:
        raise errors.InvalidInput("since must be before until")
    d, e = t.webhook_deliveries, t.webhook_endpoints
    mine = select(e.c.id).where(_of_account(account_id))
    if endpoint_id is not None:
        get_endpoint(conn, account_id, endpoint_id)
        mine = mine.where(e.c.id == endpoint_id)
    condition = and_(
        d.c.endpoint_id.in_(mine.scalar_subquery()),
        d.c.created_at >= since,
        d.c.created_at < until,
        d.c.state != PENDING,
    )
    if failed_only:
        condition = and_(condition, d.c.state == FAILED)
    return _replay(conn, condition)


# endregion
