"""Read side: the mail log with its filters and cursor, one message's whole story, broadcast
results. Shared by the JSON API, the CLI and the web UI so they always agree."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection, Select, and_, case, false, func, or_, select

from postwarden import errors
from postwarden.domain import addresses, classify, clock, status
from postwarden.domain.status import UNDELIVERED, Status
from postwarden.store import tables as t

m = t.messages

UNDELIVERED_VALUES = tuple(sorted(s.value for s in UNDELIVERED))


@dataclass(frozen=True, slots=True)
class LogFilter:
    statuses: Sequence[str] = ()
    undelivered: bool = False
    address: str | None = None
    broadcast_id: int | None = None
    category: str | None = None
    channel: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def validate(self) -> LogFilter:
        unknown = [s for s in self.statuses if s not in Status._value2member_map_]
        if unknown:
            raise errors.InvalidInput(
                f"unknown status {unknown[0]!r}; one of " + ", ".join(s.value for s in Status)
            )
        if self.since and self.until and self.since > self.until:
            raise errors.InvalidInput("since is after until")
        return self


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None = None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def encode_cursor(last_id: int, created_at: datetime | None = None) -> str:
    """The position after the last row shown: its id ("m{id}"), and its creation time too
    ("t{microseconds}.{id}") on pages ordered by (created_at, id)."""
    text = f"m{last_id}" if created_at is None else f"t{(created_at - _EPOCH) // _US}.{last_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime | None, int]:
    """(created_at or None, id) from :func:`encode_cursor`; InvalidInput for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if text.startswith("m"):
            return None, int(text[1:])
        if text.startswith("t"):
            micros, last_id = text[1:].split(".")
            return _EPOCH + int(micros) * _US, int(last_id)
        raise ValueError(cursor)
    except (ValueError, OverflowError) as exc:
        raise errors.InvalidInput("the cursor is not one this API gave out") from exc


def _statuses(f: LogFilter) -> list[str]:
    """The statuses ``f`` lets through, sorted; empty for all of them."""
    statuses = set(f.statuses)
    if f.undelivered:
        statuses = statuses & set(UNDELIVERED_VALUES) if statuses else set(UNDELIVERED_VALUES)
        if not statuses:
            statuses = {"-"}
    return sorted(statuses)


def _filtered(account_id: int, f: LogFilter, query: Select[Any]) -> Select[Any]:
    query = query.where(m.c.account_id == account_id)
    statuses = _statuses(f)
    if statuses:
        query = query.where(m.c.status.in_(statuses))
    if f.address:
        wanted = f.address.strip().lower()
        if wanted.startswith("@"):
            query = query.where(m.c.to_addr.endswith(wanted, autoescape=True))
        else:
            query = query.where(m.c.to_addr == addresses.normalize(wanted))
    if f.broadcast_id is not None:
        query = query.where(m.c.broadcast_id == f.broadcast_id)
    if f.category is not None:
        query = query.where(m.c.category == f.category)
    if f.channel is not None:
        query = query.where(m.c.channel == f.channel)
    if f.since is not None:
        query = query.where(m.c.created_at >= f.since)
    if f.until is not None:
        query = query.where(m.c.created_at < f.until)
    return query


_LOG_COLUMNS = (
    m.c.id,
    m.c.to_addr,
    m.c.channel,
    m.c.status,
    m.c.reason,
    m.c.detail,
    m.c.category,
    m.c.broadcast_id,
    m.c.attempts,
    m.c.created_at,
    m.c.updated_at,
    m.c.flags,
    m.c.resend_of,
    t.contents.c.subject,
)


def log_row(row: Any) -> dict[str, Any]:
    item = dict(row._mapping)
    item["to"] = item.pop("to_addr")
    return item


def mail_log(
    conn: Connection, account_id: int, f: LogFilter, *, cursor: str | None = None, limit: int = 50
) -> Page:
    """Newest first; the cursor is the last row seen, so pages stay stable while mail flows."""
    f = f.validate()
    return _paged(conn, _filtered(account_id, f, select(m.c.id)), cursor, limit, _by_date(f))


def _by_date(f: LogFilter) -> bool:
    """Pages of a date range are ordered by (created_at, id), along the (account, created_at,
    id) index: ordered by id alone, PostgreSQL walks the id index back from the newest message
    through every message newer than the range (millions, for a week six weeks ago)."""
    return f.since is not None or f.until is not None


def _paged(
    conn: Connection, ids: Select[Any], cursor: str | None, limit: int, by_date: bool
) -> Page:
    """One page of log rows for a filtered ``select(m.c.id)``, newest first: by (created_at,
    id) or by id. The ids are picked first, from the indexes alone where the filter allows;
    only the page's rows are then read and joined."""
    if cursor:
        at, last_id = decode_cursor(cursor)
        if (at is not None) != by_date:
            raise errors.InvalidInput(
                "the cursor belongs to a list in another order; start again from the first page"
            )
        if at is None:
            ids = ids.where(m.c.id < last_id)
        else:
            ids = ids.where(m.c.created_at <= at, or_(m.c.created_at < at, m.c.id < last_id))
    order = (m.c.created_at.desc(), m.c.id.desc()) if by_date else (m.c.id.desc(),)
    ids = ids.order_by(*order).limit(limit + 1).correlate(None)
    rows = conn.execute(
        select(*_LOG_COLUMNS)
        .join(t.contents, t.contents.c.id == m.c.content_id)
        .where(m.c.id.in_(ids.scalar_subquery()))
        .order_by(*order)
    ).all()
    items = [log_row(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor(last["id"], last["created_at"] if by_date else None)
    return Page(items, next_cursor)


def count_by_status(conn: Connection, account_id: int, f: LogFilter) -> dict[str, int]:
    query = _filtered(account_id, f.validate(), select(m.c.status, func.count()))
    return dict(conn.execute(query.group_by(m.c.status)).all())


def explain(
    reason: str | None, current: str, resend_refusal: str | None = None
) -> dict[str, str] | None:
    """The plain-language explanation and next step for a message's ``current`` status and
    reason; where
    the next step is to resend and the message cannot be (``resend_refusal``, from
    :func:`domain.status.resend_refusal`), the step says why and what to do instead."""
    if current in ("bounced", "deferred") and reason:
        group, explanation, next_step = classify.describe(reason)
        words = {"group": group, "explanation": explanation, "next_step": next_step}
    else:
        found = _STATUS_WORDS.get(current)
        if found is None:
            return None
        words = dict(found)
    if resend_refusal and "resend" in words["next_step"].lower():
        words["next_step"] = f"{words['next_step']} {resend_refusal}"
    return words


_STATUS_WORDS: dict[str, dict[str, str]] = {
    "pending": {
        "group": "waiting",
        "explanation": "Accepted and waiting for its first attempt.",
        "next_step": "Nothing to do; it can still be cancelled.",
    },
    "sending": {
        "group": "in progress",
        "explanation": "A delivery attempt is under way.",
        "next_step": "Nothing to do.",
    },
    "sent": {
        "group": "sent",
        "explanation": "The relay accepted it; no word from the recipient's server yet.",
        "next_step": "Nothing to do.",
    },
    "delivered": {
        "group": "delivered",
        "explanation": "The recipient's server accepted it.",
        "next_step": "Nothing to do.",
    },
    "opened": {
        "group": "delivered",
        "explanation": "It was delivered and opened.",
        "next_step": "Nothing to do.",
    },
    "clicked": {
        "group": "delivered",
        "explanation": "It was delivered and a link was followed.",
        "next_step": "Nothing to do.",
    },
    "failed": {
        "group": "refused by Postwarden",
        "explanation": "Postwarden did not send it: the address or its domain cannot receive mail.",
        "next_step": "Correct the address and resend.",
    },
    "dropped": {
        "group": "suppressed",
        "explanation": "Not sent: the address is on the "
        "suppression list after an earlier hard bounce, complaint or unsubscribe.",
        "next_step": "If the address works again, mark it as valid and resend.",
    },
    "blocked": {
        "group": "blocked",
        "explanation": "Not sent: the address or its domain is on the account's block list.",
        "next_step": "Remove it from the block list if it was blocked by mistake.",
    },
    "duplicate": {
        "group": "duplicate",
        "explanation": "Not sent: the same address appears "
        "earlier in this broadcast, which was sent once.",
        "next_step": "Nothing to do.",
    },
    "no_channel": {
        "group": "no channel",
        "explanation": "Not sent: the recipient has no "
        "address for this channel or did not opt in to it for this category.",
        "next_step": "Add an address or ask the recipient to opt in.",
    },
    "cancelled": {
        "group": "cancelled",
        "explanation": "Cancelled before it was sent.",
        "next_step": "Resend it if it is still wanted.",
    },
}


def message_detail(conn: Connection, account_id: int, message_id: int) -> dict[str, Any]:
    """Everything known about one message; NotFound for another account's message."""
    row = conn.execute(
        select(m, t.contents.c.from_addr, t.contents.c.from_name, t.contents.c.subject)
        .join(t.contents, t.contents.c.id == m.c.content_id)
        .where(m.c.id == message_id, m.c.account_id == account_id)
    ).first()
    if row is None:
        raise errors.NotFound(f"no message {message_id}")
    item = dict(row._mapping)
    item.pop("lease_owner", None)
    item["to"] = item.pop("to_addr")
    item["from"] = item.pop("from_addr")
    item["resend_refusal"] = status.resend_refusal(item["status"], item["has_attachments"])
    item["explanation"] = explain(item["reason"], item["status"], item["resend_refusal"])
    item["events"] = [
        dict(e._mapping)
        for e in conn.execute(
            select(
                t.events.c.kind,
                t.events.c.source,
                t.events.c.occurred_at,
                t.events.c.status_after,
                t.events.c.reason,
                t.events.c.hard,
                t.events.c.code,
                t.events.c.detail,
                t.events.c.data,
                t.events.c.inbound_id,
            )
            .where(t.events.c.message_id == message_id)
            .order_by(t.events.c.occurred_at, t.events.c.id)
        )
    ]
    item["attempts"] = [
        dict(a._mapping)
        for a in conn.execute(
            select(
                t.delivery_attempts.c.number,
                t.delivery_attempts.c.started_at,
                t.delivery_attempts.c.duration_ms,
                t.delivery_attempts.c.via,
                t.delivery_attempts.c.remote,
                t.delivery_attempts.c.outcome,
                t.delivery_attempts.c.code,
                t.delivery_attempts.c.enhanced,
                t.delivery_attempts.c.text,
                t.delivery_attempts.c.transcript,
            )
            .where(t.delivery_attempts.c.message_id == message_id)
            .order_by(t.delivery_attempts.c.number, t.delivery_attempts.c.id)
        )
    ]
    item["attachments"] = [
        {"filename": a.filename, "content_type": a.content_type, "size": a.size, "stored": a.stored}
        for a in conn.execute(
            select(
                t.attachments.c.filename,
                t.attachments.c.content_type,
                t.attachments.c.size,
                t.attachments.c.data.is_not(None).label("stored"),
            )
            .where(t.attachments.c.message_id == message_id)
            .order_by(t.attachments.c.id)
        )
    ]
    item["resent_as"] = list(
        conn.scalars(select(m.c.id).where(m.c.resend_of == message_id).order_by(m.c.id))
    )
    item["suppression"] = _suppression_of(conn, account_id, item["to"], item["category"])
    return item


def _suppression_of(
    conn: Connection, account_id: int, address: str, category: str
) -> dict[str, Any] | None:
    if not address:
        return None
    row = conn.execute(
        select(
            t.suppressions.c.reason,
            t.suppressions.c.detail,
            t.suppressions.c.category,
            t.suppressions.c.created_at,
            t.suppressions.c.message_id,
        )
        .where(
            t.suppressions.c.account_id == account_id,
            t.suppressions.c.address == address,
            or_(t.suppressions.c.category == "", t.suppressions.c.category == category),
        )
        .limit(1)
    ).first()
    return dict(row._mapping) if row else None


def broadcast_detail(conn: Connection, account_id: int, broadcast_id: int) -> dict[str, Any]:
    row = conn.execute(
        select(t.broadcasts, t.contents.c.subject, t.contents.c.from_addr)
        .join(t.contents, t.contents.c.id == t.broadcasts.c.content_id)
        .where(and_(t.broadcasts.c.id == broadcast_id, t.broadcasts.c.account_id == account_id))
    ).first()
    if row is None:
        raise errors.NotFound(f"no broadcast {broadcast_id}")
    item = dict(row._mapping)
    item["from"] = item.pop("from_addr")
    item["counts"] = dict(
        conn.execute(
            select(m.c.status, func.count())
            .where(m.c.broadcast_id == broadcast_id)
            .group_by(m.c.status)
        ).all()
    )
    return item


def broadcast_reasons(
    conn: Connection, account_id: int, broadcast_id: int
) -> dict[str, dict[str, int]]:
    """How many of the account's broadcast's messages have each reason, per status."""
    reasons: dict[str, dict[str, int]] = {}
    for state, reason, n in conn.execute(
        select(m.c.status, m.c.reason, func.count())
        .where(m.c.broadcast_id == broadcast_id, m.c.account_id == account_id)
        .group_by(m.c.status, m.c.reason)
    ):
        if reason:
            reasons.setdefault(state, {})[reason] = n
    return reasons


# region the web UI's reads: the undelivered report, the dashboard, bounce mails

DELIVERED_VALUES = ("clicked", "delivered", "opened")
"""A resend in one of these statuses takes its original off the undelivered report."""


def _not_resent_successfully() -> Any:
    resend = m.alias("resend")
    return ~(
        select(resend.c.id)
        .where(resend.c.resend_of == m.c.id, resend.c.status.in_(DELIVERED_VALUES))
        .exists()
    )


def undelivered_report(
    conn: Connection, account_id: int, f: LogFilter, *, cursor: str | None = None, limit: int = 50
) -> Page:
    """The mail log restricted to undelivered messages whose resend, if any, has not been
    delivered yet: what still needs someone's attention."""
    f = replace(f, undelivered=True).validate()
    query = _filtered(account_id, f, select(m.c.id)).where(_not_resent_successfully())
    return _paged(conn, query, cursor, limit, _by_date(f))


def count_undelivered(conn: Connection, account_id: int, f: LogFilter) -> int:
    """How many rows ``undelivered_report`` has for the same filter.

    Counted as (undelivered rows) - (those of them with a delivered resend). The first is added
    up from ``undelivered_counts`` (kept by triggers) when the filter is whole UTC days and
    statuses, as the report's is: a few hundred rows instead of the ~280,000 messages a month
    can hold; any other filter counts the messages. The second starts from the few delivered
    resends (a partial index) and finds their originals in the index of undelivered messages,
    from indexes alone; a ``NOT EXISTS`` per row instead probes the resend index once for each
    undelivered row. Separate statements: each stays cheap enough for PostgreSQL not to
    JIT-compile it (about 50 ms per call)."""
    f = replace(f, undelivered=True).validate()
    every = _counted(conn, account_id, f)
    if every is None:
        every = conn.scalar(_filtered(account_id, f, select(func.count()))) or 0
    if not every:
        return 0
    resend = m.alias("resend")
    resent = select(resend.c.resend_of).where(
        resend.c.resend_of.is_not(None), resend.c.status.in_(DELIVERED_VALUES)
    )
    fixed = conn.scalar(_filtered(account_id, f, select(func.count())).where(m.c.id.in_(resent)))
    return every - (fixed or 0)


def _counted(conn: Connection, account_id: int, f: LogFilter) -> int | None:
    """The messages ``f`` matches, from ``undelivered_counts``; None when it filters on more
    than undelivered statuses and whole UTC days."""
    if f.address or f.broadcast_id is not None or f.category is not None or f.channel is not None:
        return None
    if not all(_midnight(d) for d in (f.since, f.until) if d is not None):
        return None
    c = t.undelivered_counts.c
    query = select(func.sum(c.n)).where(c.account_id == account_id, c.status.in_(_statuses(f)))
    if f.since is not None:
        query = query.where(c.day >= f.since.astimezone(UTC).date())
    if f.until is not None:
        query = query.where(c.day < f.until.astimezone(UTC).date())
    return int(conn.scalar(query) or 0)


def _midnight(value: datetime) -> bool:
    return value.tzinfo is not None and value.astimezone(UTC).time() == time()


def report_window(
    since: date | None, until: date | None, days: int = 30, today: date | None = None
) -> tuple[datetime, datetime]:
    """UTC datetimes [start, end) for whole days ``since``..``until`` (both included); the last
    ``days`` days up to now by default."""
    today = today or clock.now().date()
    until = until or today
    if until >= date.max:  # its end, the next midnight, is past the last date there is
        raise errors.InvalidInput(f"the last day a report can end is {date.max - timedelta(1)}")
    back = timedelta(days=days - 1)
    since = since or max(until, date.min + back) - back  # no date before year 1
    return (
        datetime.combine(since, time(), tzinfo=UTC),
        datetime.combine(until + timedelta(days=1), time(), tzinfo=UTC),
    )


def daily_counts(
    conn: Connection, account_id: int, days: int = 14, today: date | None = None
) -> list[tuple[date, dict[str, int]]]:
    """Messages created on each of the last ``days`` days (UTC), counted by status; oldest
    first. One indexed range query per day keeps it the same on SQLite and PostgreSQL."""
    today = today or clock.now().date()
    result = []
    for back in range(days - 1, -1, -1):
        day = today - timedelta(days=back)
        start, end = report_window(day, day)
        result.append((day, count_by_status(conn, account_id, LogFilter(since=start, until=end))))
    return result


def recent_broadcasts(conn: Connection, account_id: int, limit: int = 5) -> list[dict[str, Any]]:
    """The newest broadcasts with their subject and counts per status."""
    rows = conn.execute(
        select(
            t.broadcasts.c.id,
            t.broadcasts.c.category,
            t.broadcasts.c.total,
            t.broadcasts.c.created_at,
            t.contents.c.subject,
        )
        .join(t.contents, t.contents.c.id == t.broadcasts.c.content_id)
        .where(t.broadcasts.c.account_id == account_id)
        .order_by(t.broadcasts.c.created_at.desc(), t.broadcasts.c.id.desc())
        .limit(limit)
    ).all()
    items = [dict(r._mapping) for r in rows]
    for item in items:
        item["counts"] = dict(
            conn.execute(
                select(m.c.status, func.count())
                .where(m.c.broadcast_id == item["id"])
                .group_by(m.c.status)
            ).all()
        )
    return items


def suppression_count(conn: Connection, account_id: int) -> int:
    return (
        conn.scalar(
            select(func.count())
            .select_from(t.suppressions)
            .where(t.suppressions.c.account_id == account_id)
        )
        or 0
    )


def bounce_mails(conn: Connection, account_id: int, message_id: int) -> list[dict[str, Any]]:
    """The raw inbound mails (DSNs, complaints) behind a message's events."""
    rows = conn.execute(
        select(
            t.inbound_mails.c.id,
            t.inbound_mails.c.received_at,
            t.inbound_mails.c.mail_from,
            t.inbound_mails.c.kind,
            t.inbound_mails.c.raw,
        )
        .where(
            t.inbound_mails.c.id.in_(
                select(t.events.c.inbound_id)
                .join(m, m.c.id == t.events.c.message_id)
                .where(t.events.c.message_id == message_id, m.c.account_id == account_id)
            )
        )
        .order_by(t.inbound_mails.c.id)
    ).all()
    return [{**r._mapping, "raw": bytes(r.raw).decode("utf-8", errors="replace")} for r in rows]


# endregion


# region engagement report (tracking): opens and clicks, human and machine apart

ENGAGEMENT_GROUPS = ("broadcast", "category", "day")
SENT_VALUES = ("clicked", "delivered", "opened", "sent")
"""Handed over to a server: the base of the engagement rates (relays never say delivered)."""


def _engagement_rate(part: int, base: int) -> float | None:
    return round(part / base, 4) if base else None


def _window(start: datetime, end: datetime) -> list[Any]:
    return [m.c.created_at >= start, m.c.created_at < end]


def _engagement_flags(account_id: int, scope: list[Any]) -> Any:
    """Per message with tracking events: opened/clicked at all, and by a person."""
    e = t.events
    machine = e.c.data["machine"].as_boolean()
    human = or_(machine.is_(None), machine == false())
    seen = e.c.kind.in_(("opened", "clicked"))  # a click implies the message was read
    clicked = e.c.kind == "clicked"
    return (
        select(
            e.c.message_id,
            func.max(case((seen, 1), else_=0)).label("o_all"),
            func.max(case((and_(seen, human), 1), else_=0)).label("o_h"),
            func.max(case((clicked, 1), else_=0)).label("c_all"),
            func.max(case((and_(clicked, human), 1), else_=0)).label("c_h"),
        )
        .join(m, m.c.id == e.c.message_id)
        .where(m.c.account_id == account_id, *scope, e.c.kind.in_(("opened", "clicked")))
        .group_by(e.c.message_id)
        .subquery()
    )


def engagement_report(
    conn: Connection,
    account_id: int,
    group: str = "broadcast",
    since: date | None = None,
    until: date | None = None,
) -> dict[str, Any]:
    """Open and click rates, human and all, per broadcast, category or day (UTC) of the
    messages created in the window (the last 30 days by default), and the categories ordered
    by human open rate ("which categories are read most"). Rates are out of ``sent`` (sent,
    delivered, opened or clicked); an open or click flagged machine counts only in the
    ``_all`` figures; a click counts as an open too."""
    if group not in ENGAGEMENT_GROUPS:
        raise errors.InvalidInput(f"group is one of {', '.join(ENGAGEMENT_GROUPS)}")
    if since and until and since > until:
        raise errors.InvalidInput("since is after until")
    start, end = report_window(since, until)
    scope = _window(start, end)
    rows = _engagement_rows(conn, account_id, group, scope)
    by_category = (
        rows if group == "category" else _engagement_rows(conn, account_id, "category", scope)
    )
    read_most = sorted(
        (r for r in by_category if r["sent"]),
        key=lambda r: (-(r["open_rate_human"] or 0.0), -r["sent"], r["key"]),
    )
    if group == "category":
        rows = read_most + [r for r in rows if not r["sent"]]
    return {
        "group": group,
        "since": start.date().isoformat(),
        "until": (end - timedelta(days=1)).date().isoformat(),
        "rows": rows,
        "categories_read_most": [
            {"category": r["key"], "open_rate_human": r["open_rate_human"], "sent": r["sent"]}
            for r in read_most
        ],
    }


def broadcast_engagement(
    conn: Connection, account_id: int, broadcast_ids: Sequence[int]
) -> dict[int, dict[str, Any]]:
    """The engagement figures of these broadcasts (whenever they were sent), by broadcast id."""
    if not broadcast_ids:
        return {}
    scope = [m.c.broadcast_id.in_(list(broadcast_ids))]
    rows = _engagement_rows(conn, account_id, "broadcast", scope)
    return {row["key"]: row for row in rows}


def _engagement_rows(
    conn: Connection, account_id: int, group: str, scope: list[Any]
) -> list[dict[str, Any]]:
    flags = _engagement_flags(account_id, scope)
    if group == "broadcast":
        key: Any = m.c.broadcast_id
    elif group == "category":
        key = m.c.category
    elif conn.dialect.name == "postgresql":
        key = func.date(func.timezone("UTC", m.c.created_at))
    else:
        key = func.date(m.c.created_at)
    query = (
        select(
            key.label("key"),
            func.sum(case((m.c.status.in_(SENT_VALUES), 1), else_=0)).label("sent"),
            func.sum(case((m.c.status.in_(DELIVERED_VALUES), 1), else_=0)).label("delivered"),
            func.sum(func.coalesce(flags.c.o_h, 0)).label("opened_human"),
            func.sum(func.coalesce(flags.c.o_all, 0)).label("opened_all"),
            func.sum(func.coalesce(flags.c.c_h, 0)).label("clicked_human"),
            func.sum(func.coalesce(flags.c.c_all, 0)).label("clicked_all"),
        )
        .select_from(m.outerjoin(flags, flags.c.message_id == m.c.id))
        .where(m.c.account_id == account_id, *scope, m.c.channel == "email")
        .group_by(key)
    )
    if group == "broadcast":
        query = query.where(m.c.broadcast_id.is_not(None)).order_by(key.desc())
    else:
        query = query.order_by(key)
    items = []
    for row in conn.execute(query):
        item = {k: int(v or 0) for k, v in row._mapping.items() if k != "key"}
        item["key"] = row.key if group != "day" else str(row.key)[:10]
        item["open_rate_human"] = _engagement_rate(item["opened_human"], item["sent"])
        item["open_rate_all"] = _engagement_rate(item["opened_all"], item["sent"])
        item["click_rate_human"] = _engagement_rate(item["clicked_human"], item["sent"])
        item["click_rate_all"] = _engagement_rate(item["clicked_all"], item["sent"])
        items.append(item)
    if group == "broadcast" and items:
        about = {
            r.id: r
            for r in conn.execute(
                select(t.broadcasts.c.id, t.broadcasts.c.category, t.contents.c.subject)
                .join(t.contents, t.contents.c.id == t.broadcasts.c.content_id)
                .where(t.broadcasts.c.id.in_([i["key"] for i in items]))
            )
        }
        for item in items:
            info = about.get(item["key"])
            item["subject"] = info.subject if info else None
            item["category"] = info.category if info else None
    return items


# endregion
