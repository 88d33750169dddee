"""Score the bounce parser and classifier against the shared labelled corpus.

One place for the scoring logic, used by tests/corpus/test_bounce_corpus.py and bench/parser.py.
The corpus is ../shared/corpus/bounces: *.eml files and expected.jsonl (labels from Sisimai's
test tables), not-bounce/ and not_bounce.jsonl.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from postwarden.inbound.mail.dsn import Kind, Recipient, Report, parse, split_mbox

__all__ = ["CorpusScore", "load_corpus", "measure_rate", "parse_file", "score_corpus"]

_FAILURE_KINDS = (Kind.BOUNCE, Kind.DELAY)
_KIND_FOR_REASON = {
    "feedback": Kind.COMPLAINT,
    "vacation": Kind.AUTOREPLY,
    "delivered": Kind.SUCCESS,
}


@dataclass
class Ratio:
    ok: int = 0
    total: int = 0

    @property
    def value(self) -> float:
        return self.ok / self.total if self.total else 1.0

    def add(self, good: bool) -> None:
        self.total += 1
        self.ok += int(good)

    def __str__(self) -> str:
        return f"{self.ok}/{self.total} = {100 * self.value:.1f}%"


@dataclass
class CorpusScore:
    recipient: Ratio = field(default_factory=Ratio)
    hard: Ratio = field(default_factory=Ratio)
    reason: Ratio = field(default_factory=Ratio)
    per_reason: dict[str, Ratio] = field(default_factory=lambda: defaultdict(Ratio))
    kinds: dict[str, Ratio] = field(default_factory=lambda: defaultdict(Ratio))
    not_bounce: Ratio = field(default_factory=Ratio)
    misses: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"recipient (failure rows)        {self.recipient}",
            f"hard/soft (failure rows)        {self.hard}",
            f"reason (other_table_agrees)     {self.reason}",
        ]
        for name, ratio in sorted(self.kinds.items()):
            lines.append(f"kind {name:<27}{ratio}")
        lines.append(f"not-bounce samples, no bounce   {self.not_bounce}")
        lines.append("per reason:")
        for name, ratio in sorted(self.per_reason.items(), key=lambda kv: -kv[1].total):
            lines.append(f"  {name:<16} {ratio}")
        return "\n".join(lines)


def load_corpus(corpus: Path) -> tuple[list[dict], list[dict]]:
    """(expected rows, not-bounce rows)."""
    rows = [
        json.loads(line)
        for line in (corpus / "expected.jsonl").read_text().splitlines()
        if line.strip()
    ]
    nb_path = corpus / "not_bounce.jsonl"
    not_bounce = (
        [json.loads(line) for line in nb_path.read_text().splitlines() if line.strip()]
        if nb_path.exists()
        else []
    )
    return rows, not_bounce


def parse_file(raw: bytes) -> list[Report]:
    return [parse(piece) for piece in split_mbox(raw)]


def _find(
    recipients: list[Recipient], used: set[int], row: dict, kinds: tuple[Kind, ...]
) -> Recipient | None:
    wanted = {a.lower() for a in (row.get("recipient"), row.get("recipient_alias")) if a}
    for i, r in enumerate(recipients):
        if i in used or r.kind not in kinds:
            continue
        names = {r.address.lower()} | ({r.original.lower()} if r.original else set())
        if names & wanted:
            used.add(i)
            return r
    return None


def score_corpus(corpus: Path) -> CorpusScore:
    rows, not_bounce = load_corpus(corpus)
    score = CorpusScore()
    by_file: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_file[row["file"]].append(row)
    for name, file_rows in by_file.items():
        reports = parse_file((corpus / name).read_bytes())
        recipients = [r for rep in reports for r in rep.recipients]
        used: set[int] = set()
        for row in sorted(file_rows, key=lambda r: r.get("index") or 0):
            reason = row["reason"]
            if not row["is_failure"]:
                kind = _KIND_FOR_REASON.get(reason)
                if kind is None:
                    continue
                good = any(rep.kind == kind for rep in reports)
                score.kinds[reason].add(good)
                if not good:
                    score.misses.append(
                        f"{name}: kind {[str(r.kind) for r in reports]} expected {kind}"
                    )
                continue
            if not row.get("recipient"):
                continue
            found = _find(recipients, used, row, _FAILURE_KINDS)
            score.recipient.add(found is not None)
            verdict = found.verdict if found else None
            score.hard.add(verdict is not None and verdict.hard == row["hard"])
            if row.get("other_table_agrees") is not False:
                good = verdict is not None and verdict.reason == reason
                score.reason.add(good)
                score.per_reason[reason].add(good)
                if not good:
                    got = (
                        f"{verdict.reason} st={found.status}"
                        if found and verdict
                        else f"no recipient (got {[r.address for r in recipients]})"
                    )
                    diag = found.diagnostic[:160] if found else ""
                    score.misses.append(
                        f"{name}#{row.get('index')}: want {reason} st={row.get('status')} "
                        f"got {got} | {diag}"
                    )
    for row in not_bounce:
        reports = parse_file((corpus / row["file"]).read_bytes())
        bounced = any(r.kind in _FAILURE_KINDS for rep in reports for r in rep.recipients)
        score.not_bounce.add(not bounced)
        if bounced:
            score.misses.append(f"{row['file']}: not a bounce but got one")
    return score


def measure_rate(corpus: Path, min_seconds: float = 3.0) -> tuple[int, float]:
    """(messages parsed, CPU seconds) for repeated passes over the corpus in this process: one
    core. CPU time rather than wall time, so that other processes on the machine do not count.

    Each pass starts with Python's regex cache empty: the corpus's 498 MIME boundaries fit in
    it (it holds 512), so a regex compiled for one mail's boundaries would be found again on
    the next pass, where real mails, each with boundaries of its own, pay for it every time."""
    files = sorted(corpus.glob("*.eml")) + sorted((corpus / "not-bounce").glob("*.eml"))
    messages = [piece for f in files for piece in split_mbox(f.read_bytes())]
    count = 0
    start = time.process_time()
    elapsed = 0.0
    while elapsed < min_seconds:
        re.purge()
        for raw in messages:
            parse(raw)
        count += len(messages)
        elapsed = time.process_time() - start
    return count, elapsed
