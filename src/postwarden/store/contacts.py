"""Contacts: the people a broadcast can name by id, with an address per channel and the
channels they chose per category."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from postwarden import errors
from postwarden.domain import clock
from postwarden.store import tables as t

c = t.contacts


@dataclass(frozen=True, slots=True)
class Contact:
    id: int
    email: str | None
    phone: str | None
    preferences: dict[str, list[str]]
    """Channels per category; a category not listed follows "*"; none: every channel."""

    def address(self, channel: str) -> str | None:
        """The contact's address on ``channel`` (None: it has none)."""
        return self.email if channel == "email" else self.phone if channel == "sms" else None


def create(
    conn: Connection,
    account_id: int,
    *,
    name: str,
    email: str | None,
    phone: str | None,
    preferences: dict[str, list[str]],
) -> int:
    contact_id = conn.scalar(
        insert(c)
        .values(
            account_id=account_id,
            name=name,
            email=email,
            phone=phone,
            preferences=preferences,
            created_at=clock.now(),
        )
        .returning(c.c.id)
    )
    assert contact_id is not None
    return contact_id


def get(conn: Connection, account_id: int, contact_id: int) -> dict[str, Any]:
    """Every column of the account's contact; NotFound for another account's."""
    row = conn.execute(select(c).where(c.c.id == contact_id, c.c.account_id == account_id)).first()
    if row is None:
        raise errors.NotFound(f"no contact {contact_id}")
    return dict(row._mapping)


def of_account(conn: Connection, account_id: int, ids: Sequence[int]) -> dict[int, Contact]:
    """Those of ``ids`` that are the account's contacts, by id (2,000 per query)."""
    found: dict[int, Contact] = {}
    for i in range(0, len(ids), 2000):
        for row in conn.execute(
            select(c.c.id, c.c.email, c.c.phone, c.c.preferences).where(
                c.c.account_id == account_id, c.c.id.in_(ids[i : i + 2000])
            )
        ):
            found[row.id] = Contact(row.id, row.email, row.phone, row.preferences or {})
    return found
