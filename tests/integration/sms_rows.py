"""Stored SMS messages for the channel tests (intake for SMS comes later), claimed like the
dispatcher claims them."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, insert

from postwarden.domain import clock
from postwarden.store import db, queue
from postwarden.store import tables as t
from postwarden.store.queue import Claimed


def store(engine: Engine, account_id: int, texts: list[tuple[str, str]], sender: str = "") -> None:
    """One content and one due SMS message per (number, text)."""
    now = clock.now()
    with engine.begin() as conn:
        for number, text in texts:
            content_id = conn.scalar(
                insert(t.contents)
                .values(
                    account_id=account_id,
                    from_addr=sender,
                    subject="",
                    text=text,
                    headers={},
                    created_at=now,
                )
                .returning(t.contents.c.id)
            )
            conn.execute(
                insert(t.messages).values(
                    account_id=account_id,
                    content_id=content_id,
                    channel="sms",
                    to_addr=number,
                    status="pending",
                    flags=[],
                    metadata={},
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )


def claim(engine: Engine, limit: int = 500) -> list[Claimed]:
    with engine.begin() as conn:
        claimed = queue.claim_batch(
            conn,
            owner="test",
            limit=limit,
            lease=timedelta(seconds=60),
            now=clock.now(),
            channel="sms",
        )
    return sorted(claimed, key=lambda c: c.id)


def build(engine: Engine, channel, claimed: list[Claimed]):  # type: ignore[no-untyped-def]
    with db.reader(engine).connect() as conn:
        return channel.build(conn, claimed)
