"""Reads of the events the recorder keeps (it alone writes them): when a message was handed
over, which links were followed, how many events a source recorded."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from postwarden.domain.status import Kind
from postwarden.store import tables as t

e = t.events

_HANDED_OVER = (Kind.DELIVERED.value, Kind.RELAYED.value)


def handed_over_at(conn: Connection, message_ids: Iterable[int]) -> dict[int, datetime]:
    """When each message was first delivered or relayed (those that were), by id."""
    ids = list(message_ids)
    if not ids:
        return {}
    return dict(
        conn.execute(  # type: ignore[arg-type]
            select(e.c.message_id, func.min(e.c.occurred_at))
            .where(e.c.message_id.in_(ids), e.c.kind.in_(_HANDED_OVER))
            .group_by(e.c.message_id)
        ).all()
    )


def clicks_since(conn: Connection, message_id: int, since: datetime) -> list[dict[str, Any]]:
    """The evidence (``data``) of the message's clicks recorded from ``since`` on."""
    return [
        data or {}
        for data in conn.scalars(
            select(e.c.data).where(
                e.c.message_id == message_id,
                e.c.kind == Kind.CLICKED.value,
                e.c.occurred_at >= since,
            )
        )
    ]


def count(conn: Connection, *, source: str, kind: Kind | None = None) -> int:
    """How many events ``source`` recorded (of one kind)."""
    query = select(func.count()).select_from(e).where(e.c.source == source)
    if kind is not None:
        query = query.where(e.c.kind == kind.value)
    return conn.scalar(query) or 0
