"""Figure 4 (light): the mail log's first page and filters, p95 of repeated calls of the query
functions, on a SQLite database seeded by ``bench/ui_queries.py``'s seeder (realistic statuses,
90 days of dates, events). The default run seeds 100,000 messages; ``--full`` seeds 1,000,000
(bench/ui_queries.py also times the same reads through the web UI)."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import common


def run(report: common.Report, n: int, workdir: Path, runs: int = 20) -> None:
    from sqlalchemy import select

    from bench import ui_queries
    from postwarden import accounts, queries, store
    from postwarden.store import tables as t

    with common.sqlite_db(workdir, "queries") as url:
        engine = store.connect(url)
        store.migrate(engine)
        t0 = time.perf_counter()
        ui_queries.seed(engine, n, random.Random(42))
        seeded = time.perf_counter() - t0
        with engine.connect() as conn:
            account = accounts.by_name(conn, "acme")
            address = conn.scalar(
                select(t.messages.c.to_addr)
                .where(t.messages.c.account_id == account.id, t.messages.c.status == "bounced")
                .limit(1)
            )
            broadcast = conn.scalar(
                select(t.broadcasts.c.id).where(t.broadcasts.c.account_id == account.id).limit(1)
            )
            now = datetime.now(UTC)
            cases = [
                ("first page", queries.LogFilter()),
                ("undelivered", queries.LogFilter(undelivered=True)),
                ("address", queries.LogFilter(address=address)),
                (
                    "date range",
                    queries.LogFilter(
                        since=now - timedelta(days=44), until=now - timedelta(days=38)
                    ),
                ),
                ("broadcast", queries.LogFilter(broadcast_id=broadcast)),
            ]
            worst = 0.0
            parts = []
            for name, log_filter in cases:
                _p50, p95 = ui_queries.timed(
                    lambda f=log_filter: queries.mail_log(conn, account.id, f, limit=50), runs
                )
                worst = max(worst, p95)
                parts.append(f"{name} {p95:.1f}")
        engine.dispose()
    report.add(
        common.Figure(
            f"queries mail log p95 (worst of 5, SQLite {n:,} messages)",
            worst,
            "ms",
            target="< 50 ms",
            note="p95 ms: " + ", ".join(parts) + f"; seeded in {seeded:.0f} s",
        )
    )
