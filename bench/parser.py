"""Bounce parser + classifier benchmark: accuracy on the shared corpus and parse rate.

python bench/parser.py [--corpus DIR] [--misses] [--seconds N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from postwarden.testing.scoring import measure_rate, score_corpus

MISLABELLED_NOTE = (
    "  (not-bounce: 2/3 expected. rb-issue-368-bug.eml is labelled not-a-bounce by Sisimai,\n"
    '   but it is a real postmaster notice: "reject reason: Mailbox full", "target mail\n'
    '   address: xxxx@yyyyyy.net", the message returned below. We report it, on purpose, as a\n'
    "   soft mailboxfull bounce of that address; the two true not-bounces give no bounce.)"
)
DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared/corpus/bounces"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--misses", action="store_true", help="list every miss")
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timing run")
    args = ap.parse_args(argv)
    if not (args.corpus / "expected.jsonl").exists():
        print(f"corpus not found at {args.corpus}", file=sys.stderr)
        return 2
    score = score_corpus(args.corpus)
    print(score.summary())
    print(MISLABELLED_NOTE)
    if args.misses:
        print("misses:")
        for miss in score.misses:
            print("  " + miss)
    wall_start = time.perf_counter()
    count, seconds = measure_rate(args.corpus, args.seconds)
    wall = time.perf_counter() - wall_start
    print(
        f"parse rate: {count} messages in {seconds:.2f} CPU s = {count / seconds:,.0f} msgs/s "
        "(parse + classify, one core)"
    )
    print(f"            wall clock {wall:.2f} s = {count / wall:,.0f} msgs/s (includes loading)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
