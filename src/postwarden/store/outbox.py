"""What the outbound side reads to build claimed messages, and writes beside their facts.

Reads (on the dispatcher's read-only connection): the contents, the bytes kept for retries, the
attachments, the accounts' bounce domains and tracking setting, each for a whole claimed batch
in one query. Writes (in the record transaction): each attempt's row and the bytes kept for the
next attempt. The statements of the status and events are :mod:`postwarden.store.recorder`'s.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Row, select

from postwarden.store import batch, db
from postwarden.store import tables as t


def contents(conn: Connection, ids: Collection[int]) -> list[Row[Any]]:
    """The contents' rows (``id``, ``from_addr``, ``from_name``, ``subject``, ``text``,
    ``html``, ``headers``)."""
    if not ids:
        return []
    c = t.contents.c
    return list(
        conn.execute(
            select(c.id, c.from_addr, c.from_name, c.subject, c.text, c.html, c.headers).where(
                c.id.in_(ids)
            )
        )
    )


def kept_bodies(conn: Connection, message_ids: Collection[int]) -> dict[int, bytes]:
    """The bytes kept by an earlier attempt of each message (a retry sends them again)."""
    if not message_ids:
        return {}
    rows = conn.execute(
        select(t.bodies.c.message_id, t.bodies.c.raw).where(t.bodies.c.message_id.in_(message_ids))
    )
    return {mid: raw for mid, raw in rows}


def attachments(conn: Connection, message_ids: Collection[int]) -> dict[int, list[Row[Any]]]:
    """Each message's attachments in their order (``filename``, ``content_type``, ``data``)."""
    found: dict[int, list[Row[Any]]] = defaultdict(list)
    if message_ids:
        a = t.attachments.c
        for row in conn.execute(
            select(a.message_id, a.filename, a.content_type, a.data)
            .where(a.message_id.in_(message_ids))
            .order_by(a.id)
        ):
            found[row.message_id].append(row)
    return found


def bounce_domains(conn: Connection, account_ids: Collection[int]) -> dict[int, str]:
    if not account_ids:
        return {}
    a = t.accounts.c
    return dict(conn.execute(select(a.id, a.bounce_domain).where(a.id.in_(account_ids))).all())


def account_tracking(conn: Connection, account_ids: Collection[int]) -> dict[int, bool]:
    """Whether each account tracks engagement (for messages that do not decide for themselves)."""
    if not account_ids:
        return {}
    a = t.accounts.c
    return dict(conn.execute(select(a.id, a.tracking).where(a.id.in_(account_ids))).all())


class Attempt(NamedTuple):
    """One ``delivery_attempts`` row."""

    message_id: int
    number: int
    started_at: datetime
    duration_ms: int
    via: str
    remote: str | None
    outcome: str
    code: int | None
    enhanced: str | None
    text: str
    transcript: str


_ATTEMPT_COLUMNS = Attempt._fields


def add_attempts(conn: Connection, attempts: Sequence[Attempt]) -> None:
    """Insert the attempts' rows (plain SQL: one per message the dispatcher sends)."""
    if not attempts:
        return
    sql = batch.dialect_of(conn)
    when = sql.when
    rows = [(*a[:2], when(a.started_at), *a[3:]) for a in attempts]
    sql.insert_many(conn, "delivery_attempts", _ATTEMPT_COLUMNS, rows)


def keep_bodies(conn: Connection, bodies: Mapping[int, bytes]) -> None:
    """Keep each message's bytes for its next attempt (a body kept already stays as it is)."""
    if bodies:
        db.insert_ignore(
            conn, t.bodies, [{"message_id": mid, "raw": raw} for mid, raw in bodies.items()]
        )
