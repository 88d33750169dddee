"""Plain SQL for the hot paths (recording each delivery attempt, storing inbound mails).

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
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from functools import cache
from itertools import chain
from typing import Any

from sqlalchemy import JSON, Boolean, Connection, Engine, Integer, LargeBinary, String, Text
from sqlalchemy.types import TypeEngine

from postwarden.store.tables import UTCDateTime

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
        if isinstance(type_, UTCDateTime):
            return self.when
        if isinstance(type_, JSON):
            return self.json
        return _same

    def cast(self, type_: TypeEngine[Any]) -> str:
        """The PostgreSQL type of a VALUES column (its first row decides otherwise)."""
        if isinstance(type_, UTCDateTime):
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
        from postwarden.store.tables import metadata

        types = metadata.tables[table].c
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
        from postwarden.store.tables import messages

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
            casts += ("text", *(self.cast(messages.c[c].type) for c in extra))
            arrays = ", ".join(f"%b::{c}[]" for c in casts)
            sets = "".join(f", {c} = v.{c}" for c in extra)
            sql = self._sql[key] = (
                "UPDATE messages AS m SET status = v.status, flags = v.flags, "
                "updated_at = v.updated_at, last_event_at = v.last_event_at, "
                f"reason = v.reason, detail = v.detail{sets} "
                f"FROM unnest({arrays}) AS v({', '.join(names)}) WHERE m.id = v.id"
            )
        conn.exec_driver_sql(sql, _by_column(rows))


@cache
def _dialect(name: str) -> Dialect:
    return Dialect(name)


def dialect_of(conn: Connection) -> Dialect:
    return _dialect(conn.dialect.name)


def dialect_for(engine: Engine) -> Dialect:
    return _dialect(engine.dialect.name)
