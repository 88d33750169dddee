"""What the SMS channel reads to build its messages: each content's text and sender.

A content's ``from_addr`` is the sender an SMS is sent from when it holds one (an E.164
number or an alphanumeric sender id); the empty string means the provider's default. A
per-account sender belongs here too, read beside the content, when accounts get one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, select

from postwarden.store import tables as t


@dataclass(frozen=True, slots=True)
class Text:
    text: str
    sender: str  # "" for the provider's default


def texts(conn: Connection, content_ids: Iterable[int]) -> dict[int, Text]:
    """The text and sender of each content (contents without a text are absent)."""
    ids = sorted(set(content_ids))
    if not ids:
        return {}
    c = t.contents.c
    rows = conn.execute(select(c.id, c.text, c.from_addr).where(c.id.in_(ids)))
    return {row.id: Text(row.text, row.from_addr or "") for row in rows if row.text}
