"""The reads that tie an inbound event (a bounce mail now, a provider's webhook later) to the
message it is about: messages by id, the latest message to an address, the accounts whose
bounce domain received a mail, when each message was last attempted.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Connection, func, select

from postwarden.store import batch
from postwarden.store import tables as t

__all__ = [
    "Message",
    "accounts_for_domains",
    "by_provider_ids",
    "last_attempts",
    "latest_to",
    "messages",
]

m = t.messages


class Message(NamedTuple):
    id: int
    account_id: int
    to_addr: str


def messages(conn: Connection, ids: Sequence[int]) -> dict[int, Message]:
    """The messages ``ids`` that exist, by id (one query per chunk of ids)."""
    found: dict[int, Message] = {}
    for chunk in batch.chunks(ids):
        for row in conn.execute(
            select(m.c.id, m.c.account_id, m.c.to_addr).where(m.c.id.in_(chunk))
        ):
            found[row.id] = Message(row.id, row.account_id, row.to_addr)
    return found


def latest_to(
    conn: Connection,
    account_ids: Sequence[int],
    address: str,
    *,
    channel: str,
    statuses: Collection[str],
    since: datetime,
    until: datetime | None = None,
) -> Message | None:
    """The most recent message to ``address`` (normalized) in one of the accounts, created
    since ``since`` (and before ``until``), in one of ``statuses``."""
    row = conn.execute(
        select(m.c.id, m.c.account_id, m.c.to_addr)
        .where(
            m.c.account_id.in_(account_ids),
            m.c.to_addr == address,
            m.c.channel == channel,
            m.c.status.in_(statuses),
            m.c.created_at >= since,
            *([m.c.created_at <= until] if until is not None else []),
        )
        .order_by(m.c.created_at.desc(), m.c.id.desc())
        .limit(1)
    ).first()
    return Message(row.id, row.account_id, row.to_addr) if row is not None else None


def accounts_for_domains(conn: Connection, domains: Collection[str]) -> list[int]:
    """The accounts whose bounce domain is one of ``domains`` (lower case)."""
    if not domains:
        return []
    return sorted(
        conn.scalars(
            select(t.accounts.c.id).where(func.lower(t.accounts.c.bounce_domain).in_(domains))
        )
    )


def last_attempts(conn: Connection, message_ids: Sequence[int]) -> dict[int, datetime]:
    """When each message's latest delivery attempt was recorded (messages never attempted
    are left out)."""
    rows = conn.execute(
        select(t.events.c.message_id, func.max(t.events.c.occurred_at))
        .where(t.events.c.message_id.in_(message_ids), t.events.c.source == "smtp")
        .group_by(t.events.c.message_id)
    )
    return {mid: when for mid, when in rows if when is not None}


def by_provider_ids(
    conn: Connection, account_id: int, channel: str, provider_ids: Collection[str]
) -> dict[str, Message]:
    """The account's messages on ``channel`` that their relay or provider calls by one of
    ``provider_ids`` (``messages.provider_message_id``, indexed per channel), by that id."""
    found: dict[str, Message] = {}
    for chunk in batch.chunks(sorted(set(provider_ids))):
        for row in conn.execute(
            select(m.c.id, m.c.account_id, m.c.to_addr, m.c.provider_message_id).where(
                m.c.channel == channel,
                m.c.provider_message_id.in_(chunk),
                m.c.account_id == account_id,
            )
        ):
            found[row.provider_message_id] = Message(row.id, row.account_id, row.to_addr)
    return found
