"""The database: engine set-up for SQLite and PostgreSQL, and migrations.

The same SQLAlchemy Core statements run on both; the few dialect differences (SQLite's
pragmas, PostgreSQL's ``SKIP LOCKED``) are handled here and in ``postwarden.store.queue``.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, literal_column, pool
from sqlalchemy.dialects import postgresql, sqlite

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")

BUSY_TIMEOUT = 30.0
"""Seconds a SQLite transaction waits for its process's write lock, and then SQLite's busy
handler for writers that do not take :class:`_WriteLock`, before failing with "database is
locked". Postwarden processes queue on the ``flock`` without a limit: it is held only for the
span of a transaction, and a process that dies lets go of it."""

READ_ONLY = "postwarden_read_only"
"""Execution option: ``engine.execution_options(**{READ_ONLY: True})`` (see :func:`reader`)
marks transactions that never write. On SQLite they begin deferred and take no write lock;
on PostgreSQL the option changes nothing."""


class _WriteLock:
    """The lock on one SQLite file's writes, knowing which thread holds it: a thread lock
    within the process, then (for a file) ``flock`` on ``<file>-writer`` across processes.

    Both kinds of waiter are woken as soon as the holder lets go; SQLite's own busy handler
    sleeps in growing steps (1, 2, 5, 10 ms...), which under load left several processes
    writing to one file (``serve --api-processes``) idle most of the time. A process that
    dies releases its ``flock``."""

    __slots__ = ("_file", "_lock", "owner")

    def __init__(self, path: str | None) -> None:
        self._lock = threading.Lock()
        self._file = open(f"{path}-writer", "ab") if path else None  # kept: flock is per open file
        self.owner: int | None = None

    def acquire(self, timeout: float) -> bool:
        if not self._lock.acquire(timeout=timeout):
            return False
        if self._file is not None:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX)
            except BaseException:
                self._lock.release()
                raise
        self.owner = threading.get_ident()
        return True

    def release(self) -> None:
        self.owner = None
        try:
            if self._file is not None:
                fcntl.flock(self._file, fcntl.LOCK_UN)
        finally:
            self._lock.release()


_write_locks: dict[str, _WriteLock] = {}
_write_locks_guard = threading.Lock()


def _write_lock(database: str | None) -> _WriteLock:
    memory = database in (None, "", ":memory:")
    key = ":memory:" if memory else os.path.realpath(str(database))
    with _write_locks_guard:
        lock = _write_locks.get(key)
        if lock is None:
            lock = _write_locks[key] = _WriteLock(None if memory else key)
        return lock


class _SQLiteConnection(sqlite3.Connection):
    """A pysqlite connection in autocommit mode (``isolation_level = None``) whose
    transactions Postwarden begins itself (see :func:`_sqlite_begin`).

    A write transaction holds its database's :class:`_WriteLock` from its ``BEGIN IMMEDIATE``
    until its COMMIT or ROLLBACK, so writers queue on a lock (woken at once) instead of in
    SQLite's busy handler (which sleeps in steps of milliseconds)."""

    pw_write_lock: _WriteLock | None = None  # this database's lock
    pw_held: _WriteLock | None = None  # set while this connection's transaction holds it

    def _pw_release(self, *, always: bool = False) -> None:
        held = self.pw_held
        if held is not None and (always or not self.in_transaction):
            self.pw_held = None
            held.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._pw_release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._pw_release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._pw_release(always=True)


def _sqlite_begin(conn: Connection) -> None:
    """Begin each transaction on SQLite: ``BEGIN IMMEDIATE`` under the in-process write lock.

    A deferred BEGIN that reads and then writes fails at once with SQLITE_BUSY when another
    connection committed in between (the busy handler cannot help: its snapshot is stale), so
    every transaction takes the write lock up front, except those marked :data:`READ_ONLY`
    and those a thread opens while it already holds the lock through another connection
    (waiting for itself would never end): these begin deferred, as pysqlite did."""
    dbapi = conn.connection.dbapi_connection
    lock = getattr(dbapi, "pw_write_lock", None)
    if (
        lock is None
        or conn.get_execution_options().get(READ_ONLY)
        or lock.owner == threading.get_ident()
    ):
        conn.exec_driver_sql("BEGIN")
        return
    if not lock.acquire(BUSY_TIMEOUT):
        raise sqlite3.OperationalError("database is locked (by another thread)")
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        lock.release()
        raise
    dbapi.pw_held = lock


def reader(engine: Engine) -> Engine:
    """The engine for transactions that only read (see :data:`READ_ONLY`)."""
    return engine.execution_options(**{READ_ONLY: True})


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    cursor.execute("PRAGMA cache_size=-65536")
    # Statement journals in memory: with triggers on messages, every INSERT or UPDATE of an
    # executemany opens one, and as temporary files they made a 100,000-row broadcast 2.7x
    # slower.
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def normalize_url(url: str) -> str:
    """Let people write ``postgresql://`` and still get psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def connect(url: str, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={
                "check_same_thread": False,
                "timeout": BUSY_TIMEOUT,
                "factory": _SQLiteConnection,
            },
            poolclass=pool.QueuePool,
            pool_size=8,
            max_overflow=8,
            **kwargs,
        )
        lock = _write_lock(engine.url.database)

        def _on_connect(dbapi_connection: Any, record: Any) -> None:
            # No implicit BEGIN from pysqlite: ``_sqlite_begin`` emits every BEGIN itself.
            dbapi_connection.isolation_level = None
            dbapi_connection.pw_write_lock = lock
            _sqlite_pragmas(dbapi_connection, record)

        event.listen(engine, "connect", _on_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # No server-side prepared statements: after five runs psycopg prepares a statement and
    # PostgreSQL may switch it to a generic plan that ignores how skewed the filter values
    # are; measured on 10,000,000 messages, the 30-day undelivered count went from ~130 ms to
    # ~740 ms per call once prepared. Planning these statements costs far less than that.
    kwargs.setdefault("connect_args", {}).setdefault("prepare_threshold", None)
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, **kwargs)


def insert_ignore(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert rows, skipping those that would violate a unique constraint; return how many."""
    if not rows:
        return 0
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    # Counted from RETURNING: psycopg reports rowcount -1 for an executemany.
    statement = module.insert(table).on_conflict_do_nothing().returning(literal_column("1"))
    return len(conn.execute(statement, list(rows)).all())


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config  # here: Alembic is a fifth of a worker's start-up

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema up to date (``alembic upgrade head``)."""
    from alembic import command

    command.upgrade(alembic_config(engine), "head")
