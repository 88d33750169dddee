from __future__ import annotations

from pathlib import Path

import pytest

from postwarden.inbound.dsn import Kind
from postwarden.inbound.scoring import load_corpus, parse_file, score_corpus

pytestmark = pytest.mark.corpus

CORPUS = Path(__file__).resolve().parents[2].parent / "shared/corpus/bounces"

RECIPIENT_TARGET = 0.98
HARD_TARGET = 0.95
REASON_TARGET = 0.95


@pytest.fixture(scope="module")
def score():
    if not (CORPUS / "expected.jsonl").exists():
        pytest.skip(f"shared bounce corpus not found at {CORPUS}; it is present in CI")
    return score_corpus(CORPUS)


def _report(score) -> str:
    return score.summary() + "\nmisses:\n" + "\n".join(score.misses)


def test_recipient_accuracy(score) -> None:
    assert score.recipient.value >= RECIPIENT_TARGET, _report(score)


def test_hard_soft_accuracy(score) -> None:
    assert score.hard.value >= HARD_TARGET, _report(score)


def test_reason_accuracy(score) -> None:
    assert score.reason.value >= REASON_TARGET, _report(score)


@pytest.mark.parametrize("reason", ["feedback", "vacation", "delivered"])
def test_kind_of_non_failures(score, reason: str) -> None:
    assert score.kinds[reason].total > 0
    assert score.kinds[reason].value == 1.0, _report(score)


def test_not_bounce_samples_yield_no_bounce() -> None:
    if not (CORPUS / "not_bounce.jsonl").exists():
        pytest.skip(f"shared bounce corpus not found at {CORPUS}; it is present in CI")
    _, rows = load_corpus(CORPUS)
    assert rows
    for row in rows:
        reports = parse_file((CORPUS / row["file"]).read_bytes())
        bounced = [r.address for rep in reports for r in rep.recipients
                   if r.kind in (Kind.BOUNCE, Kind.DELAY)]
        assert bounced == [], row["file"]
