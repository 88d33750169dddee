"""The suppression list and the block list: who not to send to, and why.

Hard bounces and complaints suppress at once; soft bounces that keep coming escalate to
suppression; an unsubscribe suppresses one category. An admin's "mark as valid" removes the
entry (audited); a new failure re-adds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, and_, bindparam, delete, func, insert, select

from postwarden import errors
from postwarden.domain import addresses, clock
from postwarden.domain.status import Status
from postwarden.store import batch, db, webhooks
from postwarden.store import tables as t

ALL_CATEGORIES = ""
COMPLAINT = "complaint"
UNSUBSCRIBE = "unsubscribe"
MANUAL = "manual"
SOFT_BOUNCES = "soft_bounces"

ESCALATING_REASONS = frozenset(
    {
        "mailboxfull",
        "suspend",
        "exceedlimit",
        "expired",
        "notaccept",
        "systemerror",
        "systemfull",
        "networkerror",
        "mailererror",
        "undefined",
        "onhold",
    }
)
"""Soft reasons that say something about the address; sender-side refusals (spam blocks,
policy, rate limits) say something about us and never suppress the recipient."""

_CHUNK = 2000


@dataclass(frozen=True, slots=True)
class Policy:
    soft_bounce_limit: int = 5
    soft_bounce_days: int = 30


@dataclass(frozen=True, slots=True)
class Entry:
    address: str
    category: str
    reason: str
    detail: str


def audit(
    conn: Connection, account_id: int, actor: str, action: str, target: str, **detail: object
) -> None:
    conn.execute(
        insert(t.audit_log).values(
            account_id=account_id,
            actor=actor,
            action=action,
            target=target,
            detail=detail,
            created_at=clock.now(),
        )
    )


_ENTRY = select(
    t.suppressions.c.address,
    t.suppressions.c.category,
    t.suppressions.c.reason,
    t.suppressions.c.detail,
)
_SCREEN_SUPPRESSED = _ENTRY.where(
    t.suppressions.c.account_id == bindparam("account_id"),
    t.suppressions.c.address.in_(bindparam("addresses", expanding=True)),
)
_SCREEN_SUPPRESSED_ONE = _ENTRY.where(
    t.suppressions.c.account_id == bindparam("account_id"),
    t.suppressions.c.address == bindparam("address"),
)
_SCREEN_BLOCKED = select(t.blocks.c.pattern).where(t.blocks.c.account_id == bindparam("account_id"))


class Screen:
    """Intake's look-up of the suppression and block lists for a set of addresses."""

    def __init__(
        self,
        conn: Connection,
        account_id: int,
        candidates: Iterable[str],
        unsubscribe_exempt: frozenset[str] = frozenset(),
    ) -> None:
        self.unsubscribe_exempt = unsubscribe_exempt
        wanted = sorted(set(candidates))
        self.suppressed: dict[tuple[str, str], Entry] = {}
        if len(wanted) == 1:  # one message: no expanding IN to render per call
            rows = conn.execute(
                _SCREEN_SUPPRESSED_ONE, {"account_id": account_id, "address": wanted[0]}
            )
            for row in rows:
                self.suppressed[(row.address, row.category)] = Entry(*row)
        for i in range(0, len(wanted) if len(wanted) > 1 else 0, _CHUNK):
            rows = conn.execute(
                _SCREEN_SUPPRESSED, {"account_id": account_id, "addresses": wanted[i : i + _CHUNK]}
            )
            for row in rows:
                self.suppressed[(row.address, row.category)] = Entry(*row)
        self.blocked = set(conn.scalars(_SCREEN_BLOCKED, {"account_id": account_id}))

    def decide(self, address: str, category: str) -> tuple[Status, str] | None:
        """Blocked or dropped with the reason shown to people; None when it may be sent."""
        domain = addresses.domain_of(address)
        if self.blocked and (address in self.blocked or "@" + domain in self.blocked):
            return Status.BLOCKED, f"{address} is on the block list"
        for key in ((address, ALL_CATEGORIES), (address, category)):
            entry = self.suppressed.get(key)
            if entry is not None and not (
                entry.reason == UNSUBSCRIBE and category in self.unsubscribe_exempt
            ):
                scope = f" for category {entry.category!r}" if entry.category else ""
                return Status.DROPPED, f"{address} is suppressed{scope}: {entry.reason}"
        return None


@dataclass(frozen=True, slots=True)
class Addition:
    """One suppression to add (see :func:`suppress_many`)."""

    account_id: int
    address: str
    reason: str
    source: str
    detail: str = ""
    message_id: int | None = None
    category: str = ALL_CATEGORIES


_SUPPRESSION_COLUMNS = (
    "account_id",
    "address",
    "category",
    "reason",
    "detail",
    "source",
    "message_id",
    "created_at",
)
_SUPPRESSION_KEY = ("account_id", "address", "category")
_AUDIT_COLUMNS = ("account_id", "actor", "action", "target", "detail", "created_at")


def suppress_many(
    conn: Connection, additions: Iterable[Addition], *, actor: str = "postwarden"
) -> list[Addition]:
    """Add the entries that are not there yet (the first of several for the same address and
    category wins) and audit each one added; return those added, in the given order.

    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` for the suppressions and one insert
    for their audit rows, in plain SQL (:mod:`postwarden.store.batch`): the recorder calls this
    once per batch of facts."""
    unique: dict[tuple[int, str, str], Addition] = {}
    for addition in additions:
        unique.setdefault((addition.account_id, addition.address, addition.category), addition)
    if not unique:
        return []
    sql = batch.dialect_of(conn)
    when = sql.when(clock.now())
    inserted = sql.insert_ignore_returning(
        conn,
        "suppressions",
        _SUPPRESSION_COLUMNS,
        [
            (a.account_id, a.address, a.category, a.reason, a.detail, a.source, a.message_id, when)
            for a in unique.values()
        ],
        _SUPPRESSION_KEY,
    )
    added = [a for key, a in unique.items() if key in inserted]
    webhooks.suppressions_added(conn, added)
    as_json = sql.json
    sql.insert_many(
        conn,
        "audit_log",
        _AUDIT_COLUMNS,
        [
            (
                a.account_id,
                actor,
                "suppression.add",
                a.address,
                as_json(
                    {
                        "reason": a.reason,
                        "category": a.category,
                        "message_id": a.message_id,
                        "source": a.source,
                    }
                ),
                when,
            )
            for a in added
        ],
    )
    return added


def suppress(
    conn: Connection,
    account_id: int,
    address: str,
    *,
    reason: str,
    detail: str = "",
    source: str,
    message_id: int | None = None,
    category: str = ALL_CATEGORIES,
    actor: str = "postwarden",
) -> bool:
    """Add the address (no-op if already there); True if it was added."""
    addition = Addition(account_id, address, reason, source, detail, message_id, category)
    return bool(suppress_many(conn, [addition], actor=actor))


def remove(
    conn: Connection, account_id: int, address: str, *, actor: str, category: str | None = None
) -> int:
    """Mark the address as valid: remove its entries (one category, or all); audited."""
    address = addresses.normalize(address)
    condition = and_(t.suppressions.c.account_id == account_id, t.suppressions.c.address == address)
    if category is not None:
        condition = and_(condition, t.suppressions.c.category == category)
    removed = conn.execute(delete(t.suppressions).where(condition)).rowcount
    if not removed:
        raise errors.NotFound(f"{address} is not on the suppression list")
    audit(conn, account_id, actor, "suppression.remove", address, category=category)
    webhooks.suppression_removed(conn, account_id, address, category, actor)
    return removed


def soft_bounce_escalates(conn: Connection, policy: Policy, account_id: int, address: str) -> bool:
    """True when the address has had too many soft, final failures within the window."""
    return (account_id, address) in soft_bounces_escalate(conn, policy, [(account_id, address)])


def soft_bounces_escalate(
    conn: Connection, policy: Policy, candidates: Iterable[tuple[int, str]]
) -> set[tuple[int, str]]:
    """The (account, address) pairs among ``candidates`` that have had too many soft, final
    failures within the window: one grouped count per account (and chunk of addresses)."""
    by_account: dict[int, set[str]] = {}
    for account_id, address in candidates:
        by_account.setdefault(account_id, set()).add(address)
    since = clock.now() - timedelta(days=policy.soft_bounce_days)
    over: set[tuple[int, str]] = set()
    for account_id, wanted in sorted(by_account.items()):
        ordered = sorted(wanted)
        for i in range(0, len(ordered), _CHUNK):
            rows = conn.execute(
                _SOFT_COUNTS,
                {
                    "account_id": account_id,
                    "addresses": ordered[i : i + _CHUNK],
                    "since": since,
                },
            )
            over.update(
                (account_id, address)
                for address, count in rows
                if (count or 0) >= policy.soft_bounce_limit
            )
    return over


_SOFT_COUNTS = (
    select(t.messages.c.to_addr, func.count())
    .where(
        t.messages.c.account_id == bindparam("account_id"),
        t.messages.c.to_addr.in_(bindparam("addresses", expanding=True)),
        t.messages.c.status == Status.BOUNCED.value,
        t.messages.c.reason.in_(ESCALATING_REASONS),
        t.messages.c.updated_at >= bindparam("since"),
    )
    .group_by(t.messages.c.to_addr)
)


def list_entries(
    conn: Connection, account_id: int, *, search: str = "", limit: int = 100, offset: int = 0
) -> Sequence[object]:
    query = select(t.suppressions).where(t.suppressions.c.account_id == account_id)
    if search:
        query = query.where(t.suppressions.c.address.contains(search.lower(), autoescape=True))
    return conn.execute(
        query.order_by(t.suppressions.c.created_at.desc(), t.suppressions.c.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()


def block(conn: Connection, account_id: int, pattern: str, *, actor: str, note: str = "") -> bool:
    """Block an address, or a whole domain written ``@domain``."""
    pattern = pattern.strip().lower()
    if pattern.startswith("@"):
        domain = pattern[1:]
        addresses.check("postmaster@" + domain)
    else:
        pattern = addresses.check(pattern)
    added = db.insert_ignore(
        conn,
        t.blocks,
        [
            {
                "account_id": account_id,
                "pattern": pattern,
                "note": note,
                "created_at": clock.now(),
            }
        ],
    )
    if added:
        audit(conn, account_id, actor, "block.add", pattern, note=note)
    return bool(added)


def unblock(conn: Connection, account_id: int, pattern: str, *, actor: str) -> None:
    removed = conn.execute(
        delete(t.blocks).where(
            t.blocks.c.account_id == account_id, t.blocks.c.pattern == pattern.strip().lower()
        )
    ).rowcount
    if not removed:
        raise errors.NotFound(f"{pattern} is not on the block list")
    audit(conn, account_id, actor, "block.remove", pattern)


def list_blocks(conn: Connection, account_id: int) -> Sequence[object]:
    return conn.execute(
        select(t.blocks).where(t.blocks.c.account_id == account_id).order_by(t.blocks.c.pattern)
    ).all()


def dropped_since_removal(
    conn: Connection, account_id: int, address: str, days: int = 30
) -> list[int]:
    """Messages dropped for this address in the last ``days``: what "mark as valid" offers
    to resend."""
    since = clock.now() - timedelta(days=days)
    resend = t.messages.alias("resend")
    return list(
        conn.scalars(
            select(t.messages.c.id)
            .where(
                t.messages.c.account_id == account_id,
                t.messages.c.to_addr == addresses.normalize(address),
                t.messages.c.status == Status.DROPPED.value,
                t.messages.c.created_at >= since,
                ~select(resend.c.id).where(resend.c.resend_of == t.messages.c.id).exists(),
            )
            .order_by(t.messages.c.id)
        )
    )
