from __future__ import annotations

from pathlib import Path

import pytest

from postwarden.inbound.mail.dsn import Kind
from postwarden.testing.scoring import load_corpus, parse_file, score_corpus

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


# not-bounce/rb-issue-368-bug.eml is listed as "not a bounce" by Sisimai's tests, but it is a real
# bounce: a German provider's postmaster notice (Return-Path <>, Auto-Submitted: auto-replied)
# saying the message "was rejected and discarded because it wasn't possible to save the message
# in the target mailbox", "reject reason: Mailbox full", "target mail address: xxxx@yyyyyy.net",
# with the returned message below. Sisimai only lacks a parser for that format. Reporting it as
# a soft mailbox-full bounce of that address is what a sender needs, so we assert that instead.
NOT_A_BOUNCE = ("not-bounce/is-not-bounce-01.eml", "not-bounce/is-not-bounce-02.eml")
MISLABELLED_BOUNCE = "not-bounce/rb-issue-368-bug.eml"


def _failures(name: str) -> list[tuple[str, str | None, bool | None]]:
    reports = parse_file((CORPUS / name).read_bytes())
    return [
        (r.address, r.verdict.reason if r.verdict else None, r.verdict.hard if r.verdict else None)
        for rep in reports
        for r in rep.recipients
        if r.kind in (Kind.BOUNCE, Kind.DELAY)
    ]


def test_not_bounce_samples_yield_no_bounce() -> None:
    if not (CORPUS / "not_bounce.jsonl").exists():
        pytest.skip(f"shared bounce corpus not found at {CORPUS}; it is present in CI")
    _, rows = load_corpus(CORPUS)
    assert {row["file"] for row in rows} == {*NOT_A_BOUNCE, MISLABELLED_BOUNCE}
    for name in NOT_A_BOUNCE:
        assert _failures(name) == [], name


def test_mislabelled_not_bounce_is_a_mailbox_full_bounce() -> None:
    if not (CORPUS / MISLABELLED_BOUNCE).exists():
        pytest.skip(f"shared bounce corpus not found at {CORPUS}; it is present in CI")
    assert _failures(MISLABELLED_BOUNCE) == [("xxxx@yyyyyy.net", "mailboxfull", False)]
