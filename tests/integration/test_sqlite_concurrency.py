"""SQLite under concurrent writers: read-then-write transactions from many threads of one
process must queue for the write lock, never fail with "database is locked"."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from postwarden.domain import clock
from postwarden.domain.status import Kind
from postwarden.intake import accept, schemas
from postwarden.store import accounts, db, queue, recorder, suppression
from postwarden.store import tables as t

LIMITS = accept.Limits(10_000_000, 200_000)
THREADS = 6
PER_THREAD = 40


@pytest.fixture
def sqlite_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    from conftest import make_database

    engine = db.connect(make_database("sqlite", request, tmp_path))
    request.addfinalizer(engine.dispose)
    return engine


def _hammer(workers: list[threading.Thread]) -> None:
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert not w.is_alive()


def test_concurrent_read_then_write_transactions(sqlite_engine: Engine) -> None:
    engine = sqlite_engine
    with engine.begin() as conn:
        account, _key = accounts.create(conn, "acme", "bounces.acme.test")
    policy = suppression.Policy()
    errors: list[BaseException] = []
    recorded: list[int] = []
    start = threading.Barrier(THREADS * 2)

    def submitter(n: int) -> None:
        try:
            start.wait()
            for i in range(PER_THREAD):
                body = schemas.MessageIn.model_validate(
                    {
                        "from": "shop@acme.test",
                        "to": f"u{n}-{i}@example.test",
                        "subject": "s",
                        "text": "t",
                        "idempotency_key": f"k{n}-{i}",
                    }
                )
                # intake reads (idempotency key, suppressions) and then writes
                with engine.begin() as conn:
                    accept.submit_message(conn, account, body, LIMITS)
                # the API's pattern: connect(), work, commit
                with engine.connect() as conn:
                    conn.scalar(select(func.count()).select_from(t.messages))
                    conn.commit()
        except BaseException as exc:
            errors.append(exc)

    def recorder_thread(n: int) -> None:
        try:
            start.wait()
            for _ in range(PER_THREAD):
                with engine.begin() as conn:  # claim: read-then-write in one statement
                    claimed = queue.claim_batch(
                        conn,
                        channel="email",
                        owner=f"w{n}",
                        limit=5,
                        lease=timedelta(seconds=60),
                        now=clock.now(),
                    )
                if not claimed:
                    continue
                facts = [
                    recorder.Fact(c.id, Kind.DELIVERED, "smtp", dedupe_key="attempt:1")
                    for c in claimed
                ]
                # recorder.record: selects the messages and events, then writes
                with engine.begin() as conn:
                    recorder.record(conn, facts, policy=policy)
                recorded.extend(c.id for c in claimed)
        except BaseException as exc:
            errors.append(exc)

    _hammer(
        [threading.Thread(target=submitter, args=(n,)) for n in range(THREADS)]
        + [threading.Thread(target=recorder_thread, args=(n,)) for n in range(THREADS)]
    )
    assert errors == []
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(t.messages)) == THREADS * PER_THREAD
        delivered = conn.scalar(
            select(func.count()).select_from(t.messages).where(t.messages.c.status == "delivered")
        )
        events = conn.scalar(select(func.count()).select_from(t.events))
    assert len(recorded) == len(set(recorded)) == delivered == events


def test_deferred_read_then_write_fails_without_the_fix(tmp_path: Path) -> None:
    """The failure the engine set-up prevents, shown on bare pysqlite: a deferred transaction
    that read before another connection committed cannot upgrade to a writer."""
    import sqlite3

    path = tmp_path / "bare.db"
    a = sqlite3.connect(path, timeout=5, isolation_level=None)
    b = sqlite3.connect(path, timeout=5, isolation_level=None)
    a.execute("PRAGMA journal_mode=WAL")
    a.execute("CREATE TABLE x (v INTEGER)")
    a.execute("BEGIN")
    a.execute("SELECT count(*) FROM x").fetchone()
    b.execute("INSERT INTO x VALUES (1)")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        a.execute("INSERT INTO x VALUES (2)")
    a.close()
    b.close()


def test_transactions_begin_immediate_and_reads_can_stay_deferred(sqlite_engine: Engine) -> None:
    engine = sqlite_engine
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        assert conn.connection.dbapi_connection.pw_held is not None  # type: ignore[union-attr]
    with db.reader(engine).connect() as conn:
        conn.execute(text("SELECT 1"))
        assert conn.connection.dbapi_connection.pw_held is None  # type: ignore[union-attr]
        # while a reader is open, a writer still gets in
        with engine.begin() as other:
            accounts.create(other, "acme", "bounces.acme.test")
    # a thread that holds the lock can still open a second (deferred) connection to read
    with engine.begin() as conn, engine.connect() as inner:
        assert inner.scalar(select(func.count()).select_from(t.accounts)) == 1
        accounts.create(conn, "other", "bounces.other.test")
    # a failed transaction gives the lock back
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(text("SELECT 1"))
        raise RuntimeError
    done = threading.Event()

    def writer() -> None:
        with engine.begin() as conn:
            accounts.create(conn, "third", "bounces.third.test")
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join(10)
    assert done.is_set()
