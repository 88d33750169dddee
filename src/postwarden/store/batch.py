"""Plain SQL for the hot paths (recording each delivery attempt, storing inbound mails, a
broadcast's rows), and the few statements SQLAlchemy Core cannot express (PostgreSQL's
counter compaction).

SQLAlchemy Core builds, caches and processes each statement's parameters row by row; for the
dispatcher's batches of hundreds of rows that was most of the recording cost. Here the few
hot statements are written once per dialect and run with ``Connection.exec_driver_sql`` in
the caller's transaction, with the values converted the way the SQLAlchemy types in
:mod:`postwarden.store.tables` store them (so rows written here read back identically):

- SQLite: datetimes as naive UTC ``YYYY-MM-DD HH:MM:SS.ffffff`` text, JSON as text;
  multi-row statements (``VALUES (...), (...)``) per chunk rather than an executemany, which
  runs each row as a statement of its own (its own statement journal, with triggers);
- PostgreSQL (psycopg 3): aware datetimes, JSON as text cast to json; one statement per batch
  with one array parameter per column (``unnest``) instead of an executemany.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from itertools import chain
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeEngine

from postwarden.domain.status import Flag
from postwarden.store import tables as t

CHUNK = 900
"""Rows or ids per statement: under SQLite's and PostgreSQL's parameter limits."""


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _by_column(rows: Sequence[tuple[Any, ...]]) -> tuple[list[Any], ...]:
    """Rows turned into one list per column: the arrays behind PostgreSQL's ``unnest``."""
    return tuple(list(col) for col in zip(*rows, strict=True))


_encode = json.JSONEncoder().encode  # json.dumps with its defaults, minus the call's checks


def _dumps(value: Any) -> str:
    if not value and isinstance(value, list | dict):
        return "[]" if isinstance(value, list) else "{}"
    return _encode(value)


def _same(value: Any) -> Any:
    return value


_last_when: tuple[datetime | None, str | None] = (None, None)


def _sqlite_when(value: datetime | None) -> str | None:
    """UTC as ``YYYY-MM-DD HH:MM:SS.ffffff`` (what :class:`UTCDateTime` stores). The last
    value converted is remembered (with a reference, so identity means equality): a batch
    writes one instant into many rows."""
    global _last_when
    last = _last_when
    if value is last[0]:
        return last[1]
    if value is None:
        return None
    given = value
    if value.tzinfo is not None and value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    text = value.isoformat(" ", "microseconds")[:26]  # without the "+00:00"
    _last_when = (given, text)
    return text


def _sqlite_read_when(value: str | datetime | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _sqlite_read_json(value: Any) -> Any:
    if value is None or not isinstance(value, str | bytes):
        return value
    if value == "[]":
        return []
    return json.loads(value)


def _pg_read_when(value: datetime | None) -> datetime | None:
    return value


class Dialect:
    """What differs between SQLite and PostgreSQL for the hand-written statements."""

    def __init__(self, name: str) -> None:
        self.name = name
        pg = name == "postgresql"
        self.mark = "%s" if pg else "?"
        self.when: Callable[[datetime | None], Any] = _same if pg else _sqlite_when
        self.json: Callable[[Any], str] = _dumps
        self.read_when: Callable[[Any], datetime | None] = (
            _pg_read_when if pg else _sqlite_read_when
        )
        self.read_json: Callable[[Any], Any] = _same if pg else _sqlite_read_json
        self._sql: dict[Any, str] = {}

    def marks(self, n: int) -> str:
        return ", ".join([self.mark] * n)

    def where_in(self, column: str, ids: Sequence[int]) -> tuple[str, tuple[Any, ...]]:
        """``column IN (...)`` and its parameters: one array parameter on PostgreSQL (the
        statement's text stays the same, so psycopg converts it once)."""
        if self.name == "postgresql":
            return f"{column} = ANY(%b::bigint[])", (list(ids),)
        return f"{column} IN ({self.marks(len(ids))})", tuple(ids)

    def converter(self, type_: TypeEngine[Any]) -> Callable[[Any], Any]:
        if isinstance(type_, t.UTCDateTime):
            return self.when
        if isinstance(type_, JSON):
            return self.json
        return _same

    def cast(self, type_: TypeEngine[Any]) -> str:
        """The PostgreSQL type of a VALUES column (its first row decides otherwise)."""
        if isinstance(type_, t.UTCDateTime):
            return "timestamptz"
        if isinstance(type_, JSON):
            return "json"
        if isinstance(type_, Boolean):
            return "boolean"
        if isinstance(type_, Integer):
            return "bigint"
        if isinstance(type_, String | Text):
            return "text"
        if isinstance(type_, LargeBinary):
            return "bytea"
        raise TypeError(f"no cast for {type_!r}")

    # -- statements ----------------------------------------------------------------------

    def insert_many(
        self,
        conn: Connection,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Insert rows (tuples in ``columns`` order): one multi-row INSERT per chunk on
        SQLite, one INSERT ... SELECT FROM unnest(arrays) on PostgreSQL."""
        if not rows:
            return
        cols = ", ".join(columns)
        if self.name != "postgresql":
            for values, params in self._values_chunks(rows):
                conn.exec_driver_sql(f"INSERT INTO {table} ({cols}) VALUES {values}", params)
            return
        # PostgreSQL: one statement with one array per column (unnest), so the SQL text is
        # short and psycopg prepares it once, whatever the number of rows; the arrays go in
        # binary (%b), which spares psycopg escaping every transcript in Python.
        key = ("insert", table, tuple(columns))
        sql = self._sql.get(key)
        if sql is None:
            sql = self._sql[key] = (
                f"INSERT INTO {table} ({cols}) SELECT * FROM {self._unnest(table, columns)}"
            )
        conn.exec_driver_sql(sql, _by_column(rows))

    def insert_returning_ids(
        self,
        conn: Connection,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> list[int]:
        """Insert rows (tuples in ``columns`` order) and return their ids, in the rows' order:
        one multi-row INSERT per chunk instead of one statement per row. A statement's rows
        take increasing ids in the order they are inserted, so the returned ids, sorted, are
        the rows' (RETURNING itself promises no order)."""
        return [
            i
            for found in self._insert_returning(conn, table, columns, rows, "RETURNING id")
            for i in sorted(r[0] for r in found)
        ]

    def insert_ignore_returning(
        self,
        conn: Connection,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        returning: Sequence[str],
    ) -> set[tuple[Any, ...]]:
        """Insert rows (tuples in ``columns`` order), skipping those that would violate a
        unique constraint (``ON CONFLICT DO NOTHING``); return the ``returning`` columns of
        the rows actually inserted."""
        tail = f"ON CONFLICT DO NOTHING RETURNING {', '.join(returning)}"
        return {
            tuple(r)
            for found in self._insert_returning(conn, table, columns, rows, tail)
            for r in found
        }

    def _insert_returning(
        self,
        conn: Connection,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        tail: str,
    ) -> Iterator[Sequence[Any]]:
        """``INSERT ... <tail>`` for rows (tuples in ``columns`` order); each statement's
        returned rows. SQLite (>= 3.35): multi-row VALUES per chunk; PostgreSQL: one
        INSERT ... SELECT FROM unnest(arrays), its text kept so psycopg prepares it once."""
        if not rows:
            return
        cols = ", ".join(columns)
        if self.name != "postgresql":
            for values, params in self._values_chunks(rows):
                sql = f"INSERT INTO {table} ({cols}) VALUES {values} {tail}"
                yield conn.exec_driver_sql(sql, params).fetchall()
            return
        key = ("insert_returning", table, tuple(columns), tail)
        sql = self._sql.get(key)
        if sql is None:
            sql = self._sql[key] = (
                f"INSERT INTO {table} ({cols}) SELECT * FROM {self._unnest(table, columns)} {tail}"
            )
        yield conn.exec_driver_sql(sql, _by_column(rows)).fetchall()

    def update_many(
        self,
        conn: Connection,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Set ``columns`` of rows found by id; each row is (id, *values in ``columns``
        order). One UPDATE ... FROM (VALUES ...) per chunk on SQLite, one UPDATE ... FROM
        unnest(arrays) on PostgreSQL."""
        if not rows:
            return
        if self.name != "postgresql":
            self._sqlite_update(conn, table, [(c, i) for i, c in enumerate(columns, 2)], rows)
            return
        key = ("update_many", table, tuple(columns))
        sql = self._sql.get(key)
        if sql is None:
            sets = ", ".join(f"{c} = v.{c}" for c in columns)
            sql = self._sql[key] = (
                f"UPDATE {table} AS t SET {sets} FROM {self._unnest(table, ('id', *columns))} "
                f"AS v(id, {', '.join(columns)}) WHERE t.id = v.id"
            )
        conn.exec_driver_sql(sql, _by_column(rows))

    def _sqlite_update(
        self,
        conn: Connection,
        table: str,
        sets: Sequence[tuple[str, int]],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """UPDATE ... FROM (VALUES ...) per chunk of rows, each row found by its first value
        (its id); ``sets`` pairs each column with the 1-based position of its value. As an
        executemany, with the count triggers on messages, each row cost twice as much."""
        assignments = ", ".join(f"{c} = v.column{i}" for c, i in sets)
        for values, params in self._values_chunks(rows):
            conn.exec_driver_sql(
                f"UPDATE {table} SET {assignments} FROM (VALUES {values}) AS v "
                f"WHERE {table}.id = v.column1",
                params,
            )

    def _unnest(self, table: str, columns: Sequence[str]) -> str:
        """PostgreSQL's ``unnest(%b::type[], ...)``: one binary array parameter per column,
        typed after the table's column (see :func:`_by_column` for the parameters)."""
        types = t.metadata.tables[table].c
        return f"unnest({', '.join(f'%b::{self.cast(types[c].type)}[]' for c in columns)})"

    def _values_chunks(
        self, rows: Sequence[tuple[Any, ...]]
    ) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """SQLite's multi-row statements: for each chunk of rows (at most :data:`CHUNK`
        values), its ``(?, ?), (?, ?)`` list and its values in one flat tuple."""
        width = len(rows[0])
        for chunk in chunks(rows, max(1, CHUNK // width)):
            key = ("values", width, len(chunk))
            values = self._sql.get(key)
            if values is None:
                values = self._sql[key] = ", ".join([f"({self.marks(width)})"] * len(chunk))
            yield values, tuple(chain.from_iterable(chunk))

    def update_messages(
        self, conn: Connection, extra: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """The recorder's update of messages. Each row: (id, status, flags, updated_at,
        last_event_at, keep_reason, reason, detail, *extra columns' values).

        ``reason`` and ``detail`` are always written (None when no fact of this batch moved
        the headline with a reason), as the SQLAlchemy statement this replaces did;
        ``keep_reason`` is carried along and not used."""
        if not rows:
            return
        if self.name != "postgresql":
            sets = [("status", 2), ("flags", 3), ("updated_at", 4), ("last_event_at", 5)]
            sets += [("reason", 7), ("detail", 8), *((c, 9 + i) for i, c in enumerate(extra))]
            self._sqlite_update(conn, "messages", sets, rows)
            return
        names = ("id", "status", "flags", "updated_at", "last_event_at", "keep", "reason")
        names += ("detail", *extra)
        key = ("update", extra)
        sql = self._sql.get(key)
        if sql is None:
            casts = ("bigint", "text", "json", "timestamptz", "timestamptz", "boolean", "text")
            casts += ("text", *(self.cast(t.messages.c[c].type) for c in extra))
            arrays = ", ".join(f"%b::{c}[]" for c in casts)
            sets = "".join(f", {c} = v.{c}" for c in extra)
            sql = self._sql[key] = (
                "UPDATE messages AS m SET status = v.status, flags = v.flags, "
                "updated_at = v.updated_at, last_event_at = v.last_event_at, "
                f"reason = v.reason, detail = v.detail{sets} "
                f"FROM unnest({arrays}) AS v({', '.join(names)}) WHERE m.id = v.id"
            )
        conn.exec_driver_sql(sql, _by_column(rows))

    # -- the recorder's reads --------------------------------------------------------------

    def messages_to_record(self, conn: Connection, ids: Sequence[int]) -> dict[int, Current]:
        """The messages' current facts, as the recorder folds new ones onto them; on
        PostgreSQL their rows stay locked (``FOR UPDATE``) until the transaction ends."""
        lock = " FOR UPDATE" if self.name == "postgresql" else ""
        rows: dict[int, Current] = {}
        read_when = self.read_when
        read_json = self.read_json
        for chunk in chunks(ids):
            where, params = self.where_in("id", chunk)
            for r in conn.exec_driver_sql(
                "SELECT id, account_id, status, flags, to_addr, category, last_event_at, "
                f"has_attachments, {_HAS_ENDPOINTS} FROM messages WHERE {where}{lock}",
                params,
            ):
                flags = read_json(r[3])
                rows[r[0]] = Current(
                    r[0],
                    r[1],
                    r[2],
                    frozenset(map(Flag, flags)) if flags else _NO_FLAGS,
                    r[4],
                    r[5],
                    read_when(r[6]),
                    bool(r[7]),
                    bool(r[8]),
                )
        return rows

    def dedupe_keys(self, conn: Connection, ids: Sequence[int]) -> set[tuple[int, str]]:
        """(message id, dedupe key) of these messages' events that have a key."""
        seen: set[tuple[int, str]] = set()
        for chunk in chunks(ids):
            where, params = self.where_in("message_id", chunk)
            seen.update(
                (r[0], r[1])
                for r in conn.exec_driver_sql(
                    f"SELECT message_id, dedupe_key FROM events WHERE {where} "
                    "AND dedupe_key IS NOT NULL",
                    params,
                )
            )
        return seen

    # -- intake's inserts ----------------------------------------------------------------

    def insert_dicts_returning_ids(
        self, conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]
    ) -> list[int]:
        """Insert rows (dicts with the same keys) and return their ids in order, their values
        converted as ``table``'s column types store them: SQLAlchemy's per-row parameter
        processing and RETURNING bookkeeping were most of a group commit's cost."""
        columns = list(rows[0])
        _check_defaults(table, columns)
        convert = [self.converter(table.c[name].type) for name in columns]
        values = [tuple(f(row[c]) for f, c in zip(convert, columns, strict=True)) for row in rows]
        return self.insert_returning_ids(conn, table.name, columns, values)

    def insert_sharing(
        self,
        conn: Connection,
        table: Table,
        shared: Mapping[str, Any],
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Insert rows that have most of their values in common (a broadcast's messages):
        ``shared`` holds the columns every row has, converted and sent once per statement;
        each row holds the values of ``columns``, already as stored (see :meth:`converter`).
        No RETURNING.

        SQLite: ``INSERT ... SELECT <shared values>, <row values> FROM (VALUES ...)`` of 5,000
        rows at a time; the few statements each open one statement journal (the count
        triggers make SQLite open one per statement; an executemany opened one per row).
        PostgreSQL: one ``INSERT ... SELECT <shared values>, v.* FROM unnest(arrays) AS v``.
        """
        if not rows:
            return
        names = [*shared, *columns]
        _check_defaults(table, names)
        types = table.c
        head = tuple(self.converter(types[n].type)(v) for n, v in shared.items())
        into = f"INSERT INTO {table.name} ({', '.join(names)}) "
        if self.name == "postgresql":
            constants = ", ".join(f"%s::{self.cast(types[n].type)}" for n in shared)
            conn.exec_driver_sql(
                f"{into}SELECT {constants}, v.* FROM {self._unnest(table.name, columns)} AS v",
                (*head, *_by_column(rows)),
            )
            return
        width = len(columns)
        size = min(5_000, (_SQLITE_PARAMETERS - len(head)) // width)
        picked = ", ".join(f"column{k + 1}" for k in range(width))
        for part in chunks(rows, size):
            values = ", ".join([f"({self.marks(width)})"] * len(part))
            conn.exec_driver_sql(
                f"{into}SELECT {self.marks(len(head))}, {picked} FROM (VALUES {values})",
                (*head, *chain.from_iterable(part)),
            )

    # -- the undelivered counters ----------------------------------------------------------

    def lock_counts(self, conn: Connection) -> None:
        """PostgreSQL: take the transaction's advisory lock on ``undelivered_counts``, so that
        one compaction runs at a time (two would update the same writer-0 rows)."""
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('undelivered_counts'))")

    def fold_counts_of_backends(self, conn: Connection) -> int:
        """PostgreSQL, under :meth:`lock_counts`: move every backend's ``undelivered_counts``
        rows into the row of writer 0 of their key; returns how many rows were moved."""
        return int(conn.exec_driver_sql(_FOLD_PG).scalar() or 0)


_SQLITE_PARAMETERS = 32_766
"""SQLite's limit on a statement's parameters (since 3.32)."""

# Every backend's rows move into one row per key with writer 0, which no trigger writes
# (backend pids are never 0). SKIP LOCKED leaves the rows of a transaction in flight for the
# next run: waiting for them could close a cycle with a writer that waits for a row deleted
# here. Returns how many rows it moved.
_FOLD_PG = """
WITH moved AS (
    DELETE FROM undelivered_counts u
    USING (
        SELECT account_id, day, status, writer FROM undelivered_counts
        WHERE writer <> 0 FOR UPDATE SKIP LOCKED
    ) s
    WHERE u.account_id = s.account_id AND u.day = s.day AND u.status = s.status
      AND u.writer = s.writer
    RETURNING u.account_id, u.day, u.status, u.n
), folded AS (
    INSERT INTO undelivered_counts AS c (account_id, day, status, writer, n)
    SELECT account_id, day, status, 0, sum(n) FROM moved GROUP BY account_id, day, status
    ON CONFLICT (account_id, day, status, writer) DO UPDATE SET n = c.n + excluded.n
)
SELECT count(*) FROM moved
"""


class Current(NamedTuple):
    """What the recorder needs of a message before it folds new facts onto it."""

    id: int
    account_id: int
    status: str
    flags: frozenset[Flag]
    to_addr: str
    category: str
    last_event_at: datetime | None
    has_attachments: bool
    webhooks: bool  # its account has a webhook endpoint: what it learns is sent on


_HAS_ENDPOINTS = (
    "EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.account_id = messages.account_id)"
)
"""Read with each message the recorder folds facts onto: whether anyone is to be told
(:mod:`postwarden.store.webhooks`). No endpoint, no webhook work at all, and no query of its own.
"""

_NO_FLAGS: frozenset[Flag] = frozenset()


def _check_defaults(table: Table, columns: Sequence[str]) -> None:
    """Plain SQL naming only ``columns`` must leave out no column that has a SQLAlchemy
    default (SQLAlchemy fills those in itself; plain SQL would store NULL)."""
    missed = [
        c.name
        for c in table.columns
        if c.name not in columns and not c.primary_key and c.default is not None
    ]
    if missed:
        raise ValueError(f"plain SQL into {table.name} must give {', '.join(missed)}")


@cache
def _dialect(name: str) -> Dialect:
    return Dialect(name)


def dialect_of(conn: Connection) -> Dialect:
    return _dialect(conn.dialect.name)


def dialect_for(engine: Engine) -> Dialect:
    return _dialect(engine.dialect.name)
