"""The parser process: the same reports as parsing in this process, and no mail lost when
the child dies."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from postwarden.inbound import apply, dsn, parsing
from postwarden.simulator import build_dsn

CORPUS = Path(__file__).resolve().parents[3] / "shared/corpus/bounces"


def _mails() -> list[bytes]:
    made = [
        build_dsn(
            reporting_mta="mx.example.test",
            original=b"Message-ID: <m1@acme.test>\r\nTo: <a@example.test>\r\n\r\nhi\r\n",
            recipient=f"user{i}@example.test",
            status="5.1.1",
            diagnostic=f"550 5.1.1 <user{i}@example.test>: User unknown",
            action="failed",
            sender="b+x@bounces.acme.test",
        )
        for i in range(20)
    ]
    corpus = sorted(CORPUS.rglob("*.eml"))[:40] if CORPUS.exists() else []
    return [*made, *(p.read_bytes() for p in corpus), b"\x00\xff not a mail", b""]


def test_reports_survive_the_trip_between_processes() -> None:
    for raw in _mails():
        report = dsn.parse(raw)
        assert pickle.loads(pickle.dumps(report)) == report


def test_child_parses_like_this_process() -> None:
    mails = _mails()
    parser = parsing.Parser()
    try:
        assert parser.parse(mails) == [dsn.parse(raw) for raw in mails]
        assert parser.parse([]) == []
    finally:
        parser.close()


def test_a_dead_child_is_replaced_and_nothing_is_lost(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apply, "_parser", None)
    mails = _mails()
    expected = [dsn.parse(raw) for raw in mails]
    assert len(mails) >= apply.PARSE_IN_PROCESS_FROM
    assert apply._parse_all(mails) == expected  # starts the child
    child = apply._parser
    assert child is not None
    child._process.kill()
    child._process.wait()
    assert apply._parse_all(mails) == expected  # parsed here instead
    assert "parser process failed" in caplog.text
    assert apply._parse_all(mails) == expected  # by a new child
    assert apply._parser is not None and apply._parser is not child
    apply._parser.close()
