"""Postwarden's benchmark suite: ``python -m bench`` (or ``make bench``).

Prints one ``FIGURE`` line per figure: the Postwarden number, the reference measured in the
same run (smtp-source for the limit, django-post-office for the peer) and their ratio.

    python -m bench                 # N=20,000 delivery, 100,000-recipient intake, 100k-row log
    python -m bench --smoke         # a few hundred messages: what CI runs (< 60 s)
    python -m bench --full          # the log queries on 1,000,000 messages (SQLite) and
                                    # 10,000,000 (PostgreSQL, database kept between runs)
    python -m bench --full --only queries --reseed   # rebuild the 10M PostgreSQL database
    python -m bench --only delivery,intake --messages 50000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

FIGURES = ("delivery", "intake", "inbound", "queries", "sms", "webhooks")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a few hundred messages (CI)")
    ap.add_argument("--full", action="store_true", help="the log queries on 1,000,000 messages")
    ap.add_argument("--messages", type=int, help="delivery N (default 20,000; smoke 300)")
    ap.add_argument("--recipients", type=int, help="broadcast size (default 100,000; smoke 1,000)")
    ap.add_argument(
        "--only", default=",".join(FIGURES), help="comma-separated: " + ",".join(FIGURES)
    )
    ap.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL delivery figure")
    ap.add_argument(
        "--reseed", action="store_true", help="rebuild the kept 10M PostgreSQL queries database"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)

    from bench import common

    only = {f.strip() for f in args.only.split(",") if f.strip()}
    n = args.messages or (300 if args.smoke else 20_000)
    recipients = args.recipients or (1_000 if args.smoke else 100_000)
    seconds = 3.0 if args.smoke else 10.0
    log_rows = 20_000 if args.smoke else (1_000_000 if args.full else 100_000)
    inbound_n = 300 if args.smoke else 5_000

    common.ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="postwarden-bench-"))
    report = common.Report()
    began = time.perf_counter()
    print(
        f"Postwarden bench ({'smoke' if args.smoke else 'full' if args.full else 'default'}); "
        f"work directory {workdir}",
        flush=True,
    )
    try:
        limit = peer_queued = None
        if "delivery" in only:
            from bench import delivery

            limit, peer_queued = delivery.run(
                report, n, workdir, with_pg=not args.no_pg, rounds=1 if args.smoke else 2
            )
        if "intake" in only:
            from bench import intake

            intake.broadcast(report, recipients, workdir, peer_queued)
            intake.single(report, seconds, workdir, peer_queued)
        if "inbound" in only:
            try:
                import postwarden.inbound.mail.server  # noqa: F401
            except ImportError:
                report.note("inbound figure skipped: postwarden.inbound.mail.server does not exist")
            else:
                from bench import inbound

                inbound.run(report, inbound_n, workdir, limit)
        if "queries" in only:
            from bench import queries

            queries.run(
                report,
                log_rows,
                workdir,
                runs=10 if args.smoke else 20,
                pg_messages=10_000_000 if args.full and not args.no_pg else None,
                reseed=args.reseed,
            )
        if "sms" in only:
            from bench import sms

            sms.run(report, 300 if args.smoke else 5_000, workdir)
        if "webhooks" in only:
            from bench import webhooks

            webhooks.run(report, 300 if args.smoke else 3000, workdir, seconds)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"done in {time.perf_counter() - began:.0f} s: {len(report.figures)} figures", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
