"""Web UI read benchmark: the mail log, its filters and the undelivered count on a million messages.

python bench/ui_queries.py [--db /tmp/pw-ui-bench.db] [--messages 1000000] [--runs 20] [--reseed]

Seeds a SQLite file once (bulk inserts: realistic statuses, 90 days of dates, 200k addresses,
broadcasts, resends), then times each read twice: the query function alone, and one real HTTP
request through TestClient as a signed-in admin. Prints p50/p95 in milliseconds; the target is
under 100 ms each.
"""

from __future__ import annotations

import argparse
import gc
import random
import re
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from postwarden.settings import Settings
from postwarden.store import accounts, db, queries, users
from postwarden.store import tables as t
from postwarden.web.app import create_app

STATUSES = [
    ("delivered", 700),
    ("opened", 120),
    ("clicked", 30),
    ("sent", 30),
    ("bounced", 40),
    ("deferred", 10),
    ("failed", 10),
    ("dropped", 20),
    ("blocked", 5),
    ("duplicate", 10),
    ("no_channel", 10),
    ("pending", 5),
    ("cancelled", 10),
]
REASONS = {
    "bounced": ["userunknown", "mailboxfull", "hostunknown", "spamdetected", "expired"],
    "deferred": ["mailboxfull", "speeding"],
    "failed": ["invalid_address"],
    "dropped": ["suppressed"],
    "blocked": ["blocked"],
    "duplicate": ["duplicate"],
    "no_channel": ["no_channel"],
}
CATEGORIES = ["", "billing", "news", "security", "orders"]
PASSWORD = "benchmark password"
DAYS = 90


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")


def seed(engine: Engine, count: int, rng: random.Random) -> None:
    with engine.begin() as conn:
        account, _ = accounts.create(conn, "acme", "bounces.acme.test")
        other, _ = accounts.create(conn, "globex", "bounces.globex.test")
        users.create(conn, account.id, "ops@acme.test", PASSWORD)
    now = datetime.now(UTC)
    start = now - timedelta(days=DAYS)
    weights = [w for _, w in STATUSES]
    names = [s for s, _ in STATUSES]
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        contents = []
        for i in range(400):
            contents.append(
                (account.id, "app@acme.test", "Acme", f"Subject {i}", "body", "{}", _stamp(start))
            )
        cur.executemany(
            "INSERT INTO contents (account_id, from_addr, from_name, subject, text, headers, "
            "created_at) VALUES (?,?,?,?,?,?,?)",
            contents,
        )
        # 200 broadcasts of 3,000 recipients, spread over the period; the rest transactional
        broadcast_size = 3000
        broadcasts = 200 if count >= 1_000_000 else max(1, count // 5000)
        b_rows = []
        b_at = sorted(rng.uniform(0, DAYS * 86400) for _ in range(broadcasts))
        for i, offset in enumerate(b_at):
            b_rows.append(
                (
                    account.id,
                    1 + i % 400,
                    CATEGORIES[2],
                    broadcast_size,
                    _stamp(start + timedelta(seconds=offset)),
                )
            )
        cur.executemany(
            "INSERT INTO broadcasts (account_id, content_id, category, total, created_at) "
            "VALUES (?,?,?,?,?)",
            b_rows,
        )
        # message slots in time order: broadcast bursts plus a steady transactional stream
        slots: list[tuple[float, int | None]] = []
        for i, offset in enumerate(b_at):
            slots += [(offset + j * 0.05, i + 1) for j in range(broadcast_size)]
        slots = slots[: count * 6 // 10]
        slots += [(rng.uniform(0, DAYS * 86400), None) for _ in range(count - len(slots))]
        slots.sort()
        rows = []
        for offset, broadcast_id in slots:
            status = rng.choices(names, weights)[0]
            reasons = REASONS.get(status)
            reason = rng.choice(reasons) if reasons else None
            when = _stamp(start + timedelta(seconds=offset))
            acct = account.id if broadcast_id or rng.random() > 0.05 else other.id
            rows.append(
                (
                    acct,
                    broadcast_id,
                    1 + rng.randrange(400),
                    "email",
                    f"user{rng.randrange(200_000)}@domain{rng.randrange(500)}.test",
                    "news" if broadcast_id else rng.choice(CATEGORIES),
                    status,
                    reason,
                    f"550 5.1.1 remote said no ({reason})" if reason else None,
                    "[]",
                    "{}",
                    0,
                    1 if status not in ("pending", "dropped") else 0,
                    when,
                    when,
                )
            )
            if len(rows) == 50_000:
                _insert(cur, rows)
                rows = []
        _insert(cur, rows)
        # resends of some bounced messages, half of them delivered
        cur.execute(
            "SELECT id, account_id, content_id, to_addr, created_at FROM messages "
            "WHERE status = 'bounced' ORDER BY id DESC LIMIT 5000"
        )
        resends = [
            (
                a,
                None,
                c,
                "email",
                "fixed." + to,
                "",
                rng.choice(["delivered", "bounced"]),
                None,
                None,
                "[]",
                "{}",
                0,
                1,
                created,
                created,
                mid,
            )
            for mid, a, c, to, created in cur.fetchall()
        ]
        cur.executemany(
            _INSERT.replace(") VALUES", ", resend_of) VALUES").replace("?)", "?,?)", 1), resends
        )
        raw.commit()
        cur.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()


_INSERT = (
    "INSERT INTO messages (account_id, broadcast_id, content_id, channel, to_addr, category, "
    "status, reason, detail, flags, metadata, has_attachments, attempts, created_at, "
    "updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def _insert(cur: Any, rows: list[tuple[Any, ...]]) -> None:
    cur.executemany(_INSERT, rows)


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """p50 and p95 in ms of ``runs`` calls after one that warms the cache. The garbage
    collector is off while timing, as in :mod:`timeit`: a full collection of the bench process
    takes about 100 ms and lands on whichever call triggers it (seen as a 142 ms "p95" of a
    20 ms count, right after the SQLite seed)."""
    fn()  # warm the cache once
    samples = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(runs):
            began = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - began) * 1000)
    finally:
        gc.enable()
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.95))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, default=Path("/tmp/pw-ui-bench.db"))
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--reseed", action="store_true")
    args = ap.parse_args(argv)
    if args.reseed:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{args.db}{suffix}").unlink(missing_ok=True)
    fresh = not args.db.exists()
    settings = Settings(database_url=f"sqlite:///{args.db}", secret_key="bench")
    engine = db.connect(settings.database_url)
    db.migrate(engine)
    if fresh:
        began = time.perf_counter()
        seed(engine, args.messages, random.Random(42))
        print(f"seeded {args.messages:,} messages in {time.perf_counter() - began:.0f} s")
    with engine.connect() as conn:
        total = conn.scalar(text("SELECT count(*) FROM messages"))
        account = accounts.by_name(conn, "acme")
        sample = conn.execute(
            t.messages.select()
            .where(t.messages.c.account_id == account.id, t.messages.c.status == "bounced")
            .order_by(t.messages.c.id)
            .limit(1)
            .offset(1000)
        ).first()
        assert sample is not None
        old_broadcast = conn.scalar(text("SELECT min(id) FROM broadcasts WHERE account_id = 1"))
    print(f"{total:,} messages in {args.db}")

    now = datetime.now(UTC)
    week_since = (now - timedelta(days=44)).date()
    week_until = (now - timedelta(days=38)).date()
    since30, until30 = queries.report_window(None, None)
    wk_since, wk_until = queries.report_window(week_since, week_until)
    cases: list[tuple[str, queries.LogFilter, str]] = [
        ("first page", queries.LogFilter(), "/messages"),
        ("undelivered", queries.LogFilter(undelivered=True), "/messages?undelivered=1"),
        (
            "address",
            queries.LogFilter(address=sample.to_addr),
            f"/messages?address={sample.to_addr}",
        ),
        (
            "@domain",
            queries.LogFilter(address="@domain7.test"),
            "/messages?address=%40domain7.test",
        ),
        (
            "date range (7 days, 6 weeks ago)",
            queries.LogFilter(since=wk_since, until=wk_until),
            f"/messages?since={week_since}&until={week_until}",
        ),
        (
            "broadcast (oldest)",
            queries.LogFilter(broadcast_id=old_broadcast),
            f"/messages?broadcast={old_broadcast}",
        ),
        ("status=failed", queries.LogFilter(statuses=["failed"]), "/messages?status=failed"),
        (
            "status=blocked + date range",
            queries.LogFilter(statuses=["blocked"], since=wk_since, until=wk_until),
            f"/messages?status=blocked&since={week_since}&until={week_until}",
        ),
        (
            "category=security",
            queries.LogFilter(category="security"),
            "/messages?category=security",
        ),
    ]
    client = TestClient(create_app(settings, engine, b"bench-secret"))
    page = client.get("/login").text
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    assert (
        client.post(
            "/login",
            data={"email": "ops@acme.test", "password": PASSWORD, "csrf": token},
            follow_redirects=False,
        ).status_code
        == 303
    )

    print(f"\n{'read':<36}{'query p50':>10}{'p95':>8}{'HTTP p50':>10}{'p95':>8}  (ms)")
    worst = 0.0

    def report(name: str, fn: Callable[[], object], path: str | None) -> None:
        nonlocal worst
        q50, q95 = timed(fn, args.runs)
        line = f"{name:<36}{q50:>10.1f}{q95:>8.1f}"
        if path:

            def get() -> None:
                response = client.get(path)
                assert response.status_code == 200, (path, response.status_code)

            h50, h95 = timed(get, args.runs)
            line += f"{h50:>10.1f}{h95:>8.1f}"
            worst = max(worst, h95)
        worst = max(worst, q95)
        print(line + ("  SLOW" if max(q95, h95 if path else 0) > 100 else ""), flush=True)

    with engine.connect() as conn:
        for name, f, path in cases:
            report(name, lambda f=f: queries.mail_log(conn, account.id, f, limit=50), path)
        f30 = queries.LogFilter(since=since30, until=until30)
        report(
            "undelivered count, 30 days",
            lambda: queries.count_undelivered(conn, account.id, f30),
            None,
        )
        report(
            "undelivered report (page + count)",
            lambda: (
                queries.undelivered_report(conn, account.id, f30),
                queries.count_undelivered(conn, account.id, f30),
            ),
            "/undelivered",
        )
        report(
            "dashboard (7 daily counts)",
            lambda: queries.daily_counts(conn, account.id, 7),
            "/",
        )
        report(
            "message detail",
            lambda: queries.message_detail(conn, account.id, sample.id),
            f"/messages/{sample.id}",
        )
    print(f"\nworst p95: {worst:.1f} ms (target < 100 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
