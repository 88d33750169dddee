"""Retention: ``postwarden purge`` removes old messages with everything kept about them, on both
databases, in batches, leaving queued and recent messages alone."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, func, insert, select, update

from postwarden.domain import clock
from postwarden.intake import accept, schemas
from postwarden.store import accounts, retention, suppression
from postwarden.store import tables as t

LIMITS = accept.Limits(10_000_000, 200_000)


def _submit(engine: Engine, account: accounts.Account, to: str) -> int:
    body = schemas.MessageIn.model_validate(
        {"from": "shop@acme.test", "to": to, "subject": "Order", "text": "Thanks!"}
    )
    with engine.begin() as conn:
        return accept.submit_message(conn, account, body, LIMITS).id


def _count(engine: Engine, table: object, *where: object) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def test_purge_removes_old_messages_and_their_records(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    old_done = [_submit(engine, account, f"old{i}@example.test") for i in range(7)]
    old_queued = _submit(engine, account, "waiting@example.test")
    recent = _submit(engine, account, "new@example.test")
    long_ago = clock.now() - timedelta(days=40)
    with engine.begin() as conn:
        conn.execute(
            update(t.messages)
            .where(t.messages.c.id.in_([*old_done, old_queued]))
            .values(created_at=long_ago)
        )
        conn.execute(
            update(t.messages).where(t.messages.c.id.in_(old_done)).values(status="delivered")
        )
        conn.execute(update(t.contents).values(created_at=long_ago))
        for mid in old_done:
            conn.execute(
                insert(t.events).values(
                    message_id=mid,
                    kind="delivered",
                    source="smtp",
                    occurred_at=long_ago,
                    recorded_at=long_ago,
                    status_after="delivered",
                    data={},
                )
            )
            conn.execute(
                insert(t.delivery_attempts).values(
                    message_id=mid,
                    number=1,
                    started_at=long_ago,
                    duration_ms=5,
                    via="mx",
                    outcome="accepted",
                    text="ok",
                    transcript="",
                )
            )
            conn.execute(insert(t.bodies).values(message_id=mid, raw=b"raw"))
            conn.execute(
                insert(t.attachments).values(
                    message_id=mid, filename="a.txt", content_type="text/plain", size=1, data=b"a"
                )
            )
        suppression.suppress(
            conn,
            account.id,
            "old0@example.test",
            reason="userunknown",
            detail="",
            source="smtp",
            message_id=old_done[0],
        )
        conn.execute(
            update(t.messages).where(t.messages.c.id == recent).values(resend_of=old_done[1])
        )

    seen: list[int] = []
    purged = retention.purge(
        engine,
        timedelta(days=30),
        batch_size=3,
        pause=0,
        progress=lambda p: seen.append(p.messages),
    )

    assert purged.messages == 7
    assert purged.events == 7 and purged.attempts == 7
    assert purged.bodies == 7 and purged.attachments == 7
    assert seen[:2] == [3, 6]  # bounded batches
    m = t.messages
    assert _count(engine, m, m.c.id.in_(old_done)) == 0
    assert _count(engine, t.events, t.events.c.message_id.in_(old_done)) == 0
    assert _count(engine, t.delivery_attempts) == 0
    assert _count(engine, t.bodies) == 0 and _count(engine, t.attachments) == 0
    # Queued (however old) and recent messages stay; links to purged ones are cleared.
    assert _count(engine, m, m.c.id.in_([old_queued, recent])) == 2
    with engine.connect() as conn:
        assert conn.scalar(select(m.c.resend_of).where(m.c.id == recent)) is None
        row = conn.execute(select(t.suppressions)).one()
    assert row.address == "old0@example.test" and row.message_id is None
    # Contents still used by a remaining message stay; the others went.
    assert _count(engine, t.contents) == 2
    assert purged.contents == 7

    again = retention.purge(engine, timedelta(days=30), pause=0)
    assert again.messages == 0


def test_purge_command(
    engine: Engine, account_key: tuple[accounts.Account, str], db_url: str, monkeypatch: object
) -> None:
    from typer.testing import CliRunner

    from postwarden.cli import app

    account = account_key[0]
    mid = _submit(engine, account, "old@example.test")
    with engine.begin() as conn:
        conn.execute(
            update(t.messages)
            .where(t.messages.c.id == mid)
            .values(status="bounced", created_at=clock.now() - timedelta(days=100))
        )
    monkeypatch.setenv("POSTWARDEN_DATABASE_URL", db_url)  # type: ignore[attr-defined]
    result = CliRunner().invoke(app, ["purge", "--older-than", "90"])
    assert result.exit_code == 0, result.output
    assert "purged 1 messages" in result.output
    assert _count(engine, t.messages) == 0
