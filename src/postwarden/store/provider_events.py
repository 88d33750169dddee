"""Provider events in: each account's provider URLs and their configuration, every event a
provider reported (applied to its message or kept for review), and the signed request tokens
seen (a replay is refused)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from postwarden import errors
from postwarden.domain import clock
from postwarden.store import batch
from postwarden.store import tables as t

PROVIDERS = ("sns", "sendgrid", "mailgun", "postmark")
APPLIED = "applied"
UNMATCHED = "unmatched"
IGNORED = "ignored"
STATES = (APPLIED, UNMATCHED, IGNORED)

NONCES_KEPT = timedelta(days=1)
"""How long a signed request's token is remembered: far beyond the age a signature is
accepted at (:attr:`Settings.provider_max_age`)."""


@dataclass(frozen=True, slots=True)
class Hook:
    id: int
    account_id: int
    provider: str
    token: str
    config: dict[str, Any]
    created_at: datetime

    @property
    def path(self) -> str:
        """Where the provider posts its events (the token is the account's)."""
        return f"/v1/providers/{self.provider}/events/{self.token}"


def _hook(row: Any) -> Hook:
    return Hook(row.id, row.account_id, row.provider, row.token, dict(row.config), row.created_at)


def set_hook(conn: Connection, account_id: int, provider: str, config: dict[str, Any]) -> Hook:
    """Create the account's URL for ``provider``, or change its configuration (the URL stays)."""
    if provider not in PROVIDERS:
        raise errors.NotFound(f"no provider {provider!r}; one of {', '.join(PROVIDERS)}")
    h = t.provider_hooks
    mine = (h.c.account_id == account_id, h.c.provider == provider)
    changed = conn.execute(update(h).where(*mine).values(config=config)).rowcount
    if not changed:
        conn.execute(
            insert(h).values(
                account_id=account_id,
                provider=provider,
                token=secrets.token_urlsafe(24),
                config=config,
                created_at=clock.now(),
            )
        )
    return get_hook(conn, account_id, provider)


def get_hook(conn: Connection, account_id: int, provider: str) -> Hook:
    h = t.provider_hooks
    row = conn.execute(
        select(h).where(h.c.account_id == account_id, h.c.provider == provider)
    ).first()
    if row is None:
        raise errors.NotFound(f"no {provider} events URL for this account")
    return _hook(row)


def hooks(conn: Connection, account_id: int) -> list[Hook]:
    h = t.provider_hooks
    rows = conn.execute(select(h).where(h.c.account_id == account_id).order_by(h.c.provider))
    return [_hook(r) for r in rows]


def hook_by_token(conn: Connection, provider: str, token: str) -> Hook | None:
    h = t.provider_hooks
    row = conn.execute(select(h).where(h.c.token == token, h.c.provider == provider)).first()
    return _hook(row) if row else None


def delete_hook(conn: Connection, account_id: int, provider: str) -> None:
    get_hook(conn, account_id, provider)
    h = t.provider_hooks
    conn.execute(delete(h).where(h.c.account_id == account_id, h.c.provider == provider))


def first_use(conn: Connection, provider: str, nonce: str) -> bool:
    """Remember a signed request's token; False when it was seen before (a replay). Tokens
    older than :data:`NONCES_KEPT` are forgotten on the way."""
    n = t.provider_nonces
    now = clock.now()
    conn.execute(delete(n).where(n.c.seen_at < now - NONCES_KEPT))
    return bool(
        batch.dialect_of(conn).insert_ignore_returning(
            conn,
            "provider_nonces",
            ("provider", "nonce", "seen_at"),
            [(provider, nonce[:200], batch.dialect_of(conn).when(now))],
            ("nonce",),
        )
    )


@dataclass(frozen=True, slots=True)
class Row:
    """One event to keep (see :func:`keep`)."""

    event_id: str
    event_type: str
    occurred_at: datetime | None
    recipient: str | None
    provider_message_id: str | None
    state: str
    message_id: int | None
    matched_by: str | None
    detail: str | None
    payload: dict[str, Any]


_COLUMNS = (
    "account_id",
    "provider",
    "event_id",
    "event_type",
    "received_at",
    "occurred_at",
    "recipient",
    "provider_message_id",
    "state",
    "message_id",
    "matched_by",
    "detail",
    "payload",
)


def known(conn: Connection, account_id: int, provider: str, event_ids: Sequence[str]) -> set[str]:
    """The ids among ``event_ids`` of events kept already (duplicates)."""
    e = t.provider_events
    found: set[str] = set()
    for chunk in batch.chunks(sorted(set(event_ids))):
        found.update(
            conn.scalars(
                select(e.c.event_id).where(
                    e.c.account_id == account_id, e.c.provider == provider, e.c.event_id.in_(chunk)
                )
            )
        )
    return found


def keep(conn: Connection, account_id: int, provider: str, rows: Sequence[Row]) -> set[str]:
    """Keep the events not kept yet (one multi-row insert, duplicates skipped); returns the
    ids of those kept now."""
    if not rows:
        return set()
    sql = batch.dialect_of(conn)
    when, as_json = sql.when, sql.json
    received = when(clock.now())
    inserted = sql.insert_ignore_returning(
        conn,
        "provider_events",
        _COLUMNS,
        [
            (
                account_id,
                provider,
                r.event_id[:200],
                r.event_type[:64],
                received,
                when(r.occurred_at),
                (r.recipient or "")[:320] or None,
                (r.provider_message_id or "")[:255] or None,
                r.state,
                r.message_id,
                r.matched_by,
                r.detail,
                as_json(r.payload),
            )
            for r in rows
        ],
        ("event_id",),
    )
    return {r[0] for r in inserted}


def to_review(
    conn: Connection, account_id: int, *, state: str = UNMATCHED, limit: int = 200
) -> list[dict[str, Any]]:
    """The account's provider events in ``state``, newest first (unmatched: the review list)."""
    if state not in STATES:
        raise errors.InvalidInput(f"unknown state {state!r}; one of {', '.join(STATES)}")
    e = t.provider_events
    rows = conn.execute(
        select(e)
        .where(e.c.account_id == account_id, e.c.state == state)
        .order_by(e.c.received_at.desc(), e.c.id.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]


def unmatched_count(conn: Connection, account_id: int, since: datetime) -> int:
    e = t.provider_events
    return int(
        conn.scalar(
            select(func.count()).where(
                e.c.account_id == account_id, e.c.state == UNMATCHED, e.c.received_at >= since
            )
        )
        or 0
    )
