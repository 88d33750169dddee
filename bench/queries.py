"""Figure 4: the mail log's first page, its filters and the 30-day undelivered count, p50/p95 of
repeated calls of the query functions.

- SQLite: a fresh file seeded by ``bench/ui_queries.py``'s seeder (realistic statuses, 90 days
  of dates, broadcasts, resends, events): 100,000 messages by default, 1,000,000 with ``--full``
  (bench/ui_queries.py also times the same reads through the web UI).
- PostgreSQL (``--full``): 10,000,000 messages in a database of its own
  (``postwarden_bench_10m``) seeded inside PostgreSQL with ``INSERT ... SELECT ... FROM
  generate_series(...)``, then vacuumed and analysed. The database is kept between runs and
  reused when it already holds that many messages (its indexes are brought in line with
  ``store/tables.py`` first, and ``undelivered_counts`` added if missing); ``--reseed``
  rebuilds it.

Each read prints one ``FIGURE`` line (its p95, with p50 in the note); target < 50 ms each.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import common

TARGET_MS = 50.0
PG_DATABASE = "postwarden_bench_10m"
SEED_KEY = "bench.seeded_messages"
"""``instance`` row recording how many messages the kept PostgreSQL database was seeded with."""


def run(
    report: common.Report,
    n: int,
    workdir: Path,
    runs: int = 20,
    *,
    pg_messages: int | None = None,
    reseed: bool = False,
) -> None:
    """The SQLite figure on ``n`` messages; with ``pg_messages``, the PostgreSQL one too."""
    from bench import ui_queries
    from postwarden.store import db

    with common.sqlite_db(workdir, "queries") as url:
        engine = db.connect(url)
        db.migrate(engine)
        t0 = time.perf_counter()
        ui_queries.seed(engine, n, random.Random(42))
        seeded = time.perf_counter() - t0
        report.note(f"SQLite: seeded {n:,} messages in {seeded:.0f} s")
        _figures(report, engine, f"SQLite {n:,} messages", runs)
        engine.dispose()
    if pg_messages:
        problem = common.pg_available()
        if problem is not None:
            report.note(f"PostgreSQL queries figure skipped: {problem}")
            return
        engine = pg_bench_db(report, pg_messages, reseed=reseed)
        try:
            _figures(report, engine, f"PostgreSQL {pg_messages:,} messages", runs)
        finally:
            engine.dispose()


def cases(conn: Any, account_id: int) -> list[tuple[str, Callable[[], object]]]:
    """The timed reads: name and a call, on the seeded data of ``account_id``."""
    from sqlalchemy import func, select

    from postwarden.store import queries
    from postwarden.store import tables as t

    m = t.messages
    # an address with several messages, one of them bounced (the support question)
    address = conn.scalar(
        select(m.c.to_addr)
        .where(m.c.account_id == account_id, m.c.status == "bounced")
        .order_by(m.c.id.desc())
        .limit(1)
        .offset(100)
    )
    # the oldest broadcast: its recipients are furthest from the newest ids
    broadcast = conn.scalar(
        select(func.min(t.broadcasts.c.id)).where(t.broadcasts.c.account_id == account_id)
    )
    now = datetime.now(UTC)
    since30, until30 = queries.report_window(None, None)
    week = queries.LogFilter(since=now - timedelta(days=44), until=now - timedelta(days=38))
    filters = [
        ("first page", queries.LogFilter()),
        ("undelivered", queries.LogFilter(undelivered=True)),
        ("address", queries.LogFilter(address=address)),
        ("date range (6 days, 6 weeks ago)", week),
        ("broadcast (oldest)", queries.LogFilter(broadcast_id=broadcast)),
        ("status=failed", queries.LogFilter(statuses=["failed"])),
    ]
    reads: list[tuple[str, Callable[[], object]]] = [
        (name, lambda f=f: queries.mail_log(conn, account_id, f, limit=50)) for name, f in filters
    ]
    f30 = queries.LogFilter(since=since30, until=until30)
    reads.append(
        ("undelivered count, 30 days", lambda: queries.count_undelivered(conn, account_id, f30))
    )
    return reads


def _figures(report: common.Report, engine: Any, label: str, runs: int) -> None:
    from bench import ui_queries
    from postwarden.store import accounts

    worst = 0.0
    with engine.connect() as conn:
        account = accounts.by_name(conn, "acme")
        assert account is not None
        for name, fn in cases(conn, account.id):
            p50, p95 = ui_queries.timed(fn, runs)
            worst = max(worst, p95)
            report.add(
                common.Figure(
                    f"queries {name} p95 ({label})",
                    p95,
                    "ms",
                    target=f"< {TARGET_MS:.0f} ms",
                    note=f"p50 {p50:.2f} ms over {runs} calls"
                    + ("" if p95 < TARGET_MS else "; SLOW"),
                )
            )
    report.note(f"{label}: worst p95 {worst:.2f} ms (target < {TARGET_MS:.0f} ms)")


# region the PostgreSQL 10M database ------------------------------------------------------


def pg_bench_db(report: common.Report, messages: int, *, reseed: bool = False) -> Any:
    """An engine on the kept bench database holding ``messages`` seeded messages."""
    from sqlalchemy import create_engine, text

    from postwarden.store import db

    admin = create_engine(common.PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    url = common.PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{PG_DATABASE}"
    with admin.connect() as conn:
        exists = conn.scalar(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": PG_DATABASE}
        )
        seeded = None
        if exists and not reseed:
            probe = db.connect(url)
            try:
                with probe.connect() as c:
                    has_instance = c.scalar(text("SELECT to_regclass('instance') IS NOT NULL"))
                    if has_instance:
                        seeded = c.scalar(
                            text("SELECT value FROM instance WHERE key = :k"), {"k": SEED_KEY}
                        )
            finally:
                probe.dispose()
        if seeded == str(messages):
            report.note(f"PostgreSQL: reusing {PG_DATABASE} ({messages:,} messages)")
            engine = db.connect(url)
            db.migrate(engine)
            _sync_indexes(report, engine)
            _sync_counts(report, engine)
            return engine
        if exists:
            conn.execute(text(f'DROP DATABASE "{PG_DATABASE}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{PG_DATABASE}"'))
    admin.dispose()
    engine = db.connect(url)
    db.migrate(engine)
    began = time.perf_counter()
    seed_pg(engine, messages, report)
    report.note(
        f"PostgreSQL: seeded {messages:,} messages in {PG_DATABASE} "
        f"in {time.perf_counter() - began:.0f} s"
    )
    return engine


def _sync_indexes(report: common.Report, engine: Any) -> None:
    """Make the kept database's message indexes those of ``store/tables.py`` (the single
    initial migration is regenerated when indexes change, so alembic sees nothing new)."""
    from sqlalchemy import text

    from postwarden.store import tables as t

    wanted = {ix.name: ix for ix in t.messages.indexes}
    with engine.begin() as conn:
        have = set(
            conn.scalars(
                text(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'messages' "
                    "AND indexname LIKE 'ix_messages_%'"
                )
            )
        )
        changed = False
        for name in sorted(have - set(wanted)):
            report.note(f"PostgreSQL: dropping index {name}")
            conn.execute(text(f'DROP INDEX "{name}"'))
            changed = True
        conn.execute(text("SET maintenance_work_mem = '1GB'"))
        for name in sorted(set(wanted) - have):
            report.note(f"PostgreSQL: creating index {name}")
            wanted[name].create(conn)
            changed = True
    if changed:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM (ANALYZE) messages"))


def _sync_counts(report: common.Report, engine: Any) -> None:
    """Give a kept database seeded before ``undelivered_counts`` existed the table, its
    triggers (the migration's own function) and its counts."""
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from postwarden.store import db
    from postwarden.store import tables as t

    with engine.begin() as conn:
        if conn.scalar(text("SELECT to_regclass('undelivered_counts') IS NOT NULL")):
            return
        report.note("PostgreSQL: adding undelivered_counts and its triggers")
        t.undelivered_counts.create(conn)
        migration = ScriptDirectory.from_config(db.alembic_config(engine)).get_revision("head")
        with Operations.context(MigrationContext.configure(conn)):
            migration.module.create_undelivered_triggers()
        _fill_counts(conn)


def _fill_counts(conn: Any) -> None:
    """Count the undelivered messages into ``undelivered_counts`` (the seed inserts with
    triggers off)."""
    from sqlalchemy import text

    from postwarden.store import queries

    conn.execute(
        text(
            "INSERT INTO undelivered_counts (account_id, day, status, writer, n) "
            "SELECT account_id, (created_at AT TIME ZONE 'UTC')::date, status, 0, count(*) "
            "FROM messages WHERE status = ANY(:undelivered) GROUP BY 1, 2, 3"
        ),
        {"undelivered": list(queries.UNDELIVERED_VALUES)},
    )


STATUS_THRESHOLDS = (
    # cumulative per-mille, the same mix as bench/ui_queries.py's STATUSES
    ("delivered", 700),
    ("opened", 820),
    ("clicked", 850),
    ("sent", 880),
    ("bounced", 920),
    ("deferred", 930),
    ("failed", 940),
    ("dropped", 960),
    ("blocked", 965),
    ("duplicate", 975),
    ("no_channel", 985),
    ("pending", 990),
    ("cancelled", 1000),
)


def _status_case(r: str) -> str:
    whens = " ".join(f"WHEN {r} < {limit} THEN '{name}'" for name, limit in STATUS_THRESHOLDS)
    return f"CASE {whens} END"


REASON_SQL = """CASE status
    WHEN 'bounced' THEN (ARRAY['userunknown','mailboxfull','hostunknown','spamdetected',
                               'expired'])[1 + floor(r2 * 5)::int]
    WHEN 'deferred' THEN (ARRAY['mailboxfull','speeding'])[1 + floor(r2 * 2)::int]
    WHEN 'failed' THEN 'invalid_address'
    WHEN 'dropped' THEN 'suppressed'
    WHEN 'blocked' THEN 'blocked'
    WHEN 'duplicate' THEN 'duplicate'
    WHEN 'no_channel' THEN 'no_channel'
END"""


def seed_pg(engine: Any, count: int, report: common.Report | None = None) -> None:
    """Seed ``count`` messages inside PostgreSQL: two accounts (acme, and globex with 5% of the
    transactional mail), 400 contents, 300 broadcasts sharing 60% of the messages, the rest a
    steady transactional stream over 90 days; a million addresses over 500 domains (about ten
    messages each); statuses and reasons in the SQLite seed's mix; 20,000 resends of bounced
    messages (half delivered); one event for a quarter of the messages. Ids follow time.
    Triggers are off while seeding: ``undelivered_counts`` is filled at the end."""
    from sqlalchemy import text

    from bench import ui_queries
    from postwarden.store import accounts, users
    from postwarden.store import tables as t

    def step(what: str, sql: str, **params: Any) -> None:
        began = time.perf_counter()
        conn.execute(text(sql), params)
        if report:
            report.note(f"  seed {what}: {time.perf_counter() - began:.0f} s")

    with engine.begin() as conn:
        acme, _ = accounts.create(conn, "acme", "bounces.acme.test")
        globex, _ = accounts.create(conn, "globex", "bounces.globex.test")
        users.create(conn, acme.id, "ops@acme.test", ui_queries.PASSWORD)
    broadcasts = 300
    broadcast_size = min(20_000, max(1, count * 6 // 10 // broadcasts))
    transactional = max(0, count - broadcasts * broadcast_size)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))  # no FK triggers
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        conn.execute(text("SET LOCAL work_mem = '1GB'"))
        conn.execute(text("SET LOCAL maintenance_work_mem = '2GB'"))
        conn.execute(text("SELECT setseed(0.42)"))
        for ix in t.messages.indexes:
            ix.drop(conn)
        step(
            "contents",
            "INSERT INTO contents (account_id, from_addr, from_name, subject, text, headers, "
            "created_at) SELECT :a, 'app@acme.test', 'Acme', 'Subject ' || i, 'body', '{}', "
            "now() - interval '91 days' FROM generate_series(0, 399) i",
            a=acme.id,
        )
        step(
            "broadcasts",
            "INSERT INTO broadcasts (account_id, content_id, category, total, created_at) "
            "SELECT :a, 1 + i % 400, 'news', :size, at FROM (SELECT i, now() - interval "
            "'90 days' + random() * interval '89 days 22 hours' AS at "
            "FROM generate_series(0, :b - 1) i ORDER BY at) s",
            a=acme.id,
            size=broadcast_size,
            b=broadcasts,
        )
        step(
            "messages",
            f"""
            INSERT INTO messages (account_id, broadcast_id, content_id, channel, to_addr,
                category, status, reason, detail, flags, metadata, has_attachments, attempts,
                created_at, updated_at)
            SELECT account_id, broadcast_id, content_id, 'email',
                'user' || u || '@domain' || (u % 500) || '.test', category, status,
                reason, 'remote said no (' || reason || ')', '[]', '{{}}', false,
                CASE WHEN status IN ('pending', 'dropped') THEN 0 ELSE 1 END,
                created_at, created_at
            FROM (
                SELECT *, {REASON_SQL} AS reason FROM (
                    SELECT account_id, broadcast_id, created_at, content_id, category, r2,
                        floor(r3 * 1000000)::int AS u, {_status_case("r1")} AS status
                    FROM (
                    SELECT slots.*, random() * 1000 AS r1, random() AS r2, random() AS r3
                    FROM (
                        SELECT b.account_id, b.id AS broadcast_id, b.content_id, 'news' AS
                            category, b.created_at + j * interval '10 milliseconds' AS
                            created_at
                        FROM broadcasts b CROSS JOIN generate_series(0, :size - 1) j
                        UNION ALL
                        SELECT CASE WHEN random() < 0.05 THEN :other ELSE :a END, NULL,
                            1 + floor(random() * 400)::int,
                            (ARRAY['', 'billing', 'news', 'security', 'orders'])
                                [1 + floor(random() * 5)::int],
                            now() - interval '90 days' + random() * interval '90 days'
                        FROM generate_series(1, :tx)
                    ) slots
                    ORDER BY created_at
                ) sorted
                ) s
            ) x
            """,
            a=acme.id,
            other=globex.id,
            size=broadcast_size,
            tx=transactional,
        )
        step(
            "resends",
            """
            INSERT INTO messages (account_id, broadcast_id, content_id, channel, to_addr,
                category, status, flags, metadata, has_attachments, attempts, created_at,
                updated_at, resend_of)
            SELECT account_id, NULL, content_id, 'email', 'fixed.' || to_addr, '',
                CASE WHEN random() < 0.5 THEN 'delivered' ELSE 'bounced' END, '[]', '{}',
                false, 1, created_at, created_at, id
            FROM (SELECT * FROM messages WHERE status = 'bounced' AND account_id = :a
                  ORDER BY id DESC LIMIT :n) b ORDER BY id
            """,
            a=acme.id,
            n=max(1, count // 500),
        )
        step(
            "events",
            """
            INSERT INTO events (message_id, kind, source, occurred_at, recorded_at,
                status_after, reason, hard, detail, data)
            SELECT id, CASE status WHEN 'sent' THEN 'relayed' ELSE status END,
                CASE WHEN status IN ('bounced', 'opened', 'clicked') THEN 'inbound'
                     ELSE 'smtp' END,
                created_at + interval '3 seconds', created_at + interval '3 seconds',
                status, reason, CASE WHEN status = 'bounced' THEN true END, detail, '{}'
            FROM messages WHERE id % 4 = 0 AND status NOT IN ('pending', 'sending')
            """,
        )
        for ix in t.messages.indexes:
            began = time.perf_counter()
            ix.create(conn)
            if report:
                report.note(f"  seed index {ix.name}: {time.perf_counter() - began:.0f} s")
        _fill_counts(conn)
        conn.execute(
            text("INSERT INTO instance (key, value) VALUES (:k, :v)"),
            {"k": SEED_KEY, "v": str(count)},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        began = time.perf_counter()
        conn.execute(text("VACUUM (ANALYZE)"))  # the visibility map: index-only scans
        if report:
            report.note(f"  seed vacuum analyze: {time.perf_counter() - began:.0f} s")


# endregion
