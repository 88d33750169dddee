"""The feedparser backport (inbound/mail/feedparser_compat.py) against the standard library it
reaches into: each test fails when the library changes what the backport relies on."""

from __future__ import annotations

import inspect
import re
import sys
from email import feedparser
from email.feedparser import FeedParser
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

import pytest

from postwarden.inbound.mail import feedparser_compat

backport_only = pytest.mark.skipif(
    not feedparser_compat.BACKPORTED, reason="Python >= 3.13 has the fix: no backport in use"
)


def _mails() -> list[bytes]:
    """Multiparts whose boundaries hold regex metacharacters, nested, unterminated, with
    lines that only start like a boundary, 8-bit bytes and CR-only line ends."""

    def multipart(boundary: str, parts: list[bytes], close: bool = True) -> bytes:
        out = f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\npreamble\r\n'.encode()
        for part in parts:
            out += f"--{boundary}\r\n".encode() + part + b"\r\n"
        return out + (f"--{boundary}--  \r\nepilogue\r\n".encode() if close else b"")

    leaf = b"Content-Type: text/plain\r\n\r\nhello\r\n"
    eight = "Content-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n".encode()
    inner = multipart("in.(1)+[x]?", [leaf, eight])
    tricky = b"Content-Type: text/plain\r\n\r\n--a.b*c is not a boundary\r\n"
    return [
        multipart("a.b*c", [leaf, tricky, b"Content-Type: message/rfc822\r\n\r\n" + inner]),
        multipart("=_Q.*+?", [eight, inner], close=False),
        multipart("plain", [leaf]).replace(b"\r\n", b"\n"),
        multipart("cr", [leaf]).replace(b"\r\n", b"\r"),
        multipart("x", []),
    ]


def _tree(message: Message) -> object:
    payload = message.get_payload()
    body = [_tree(p) for p in payload] if isinstance(payload, list) else payload
    return (
        message.items(),
        body,
        message.preamble,
        message.epilogue,
        [type(d) for d in message.defects],
    )


@pytest.mark.parametrize("raw", _mails())
def test_parses_exactly_as_the_standard_library(raw: bytes) -> None:
    expected = BytesParser(policy=compat32).parsebytes(raw)
    assert _tree(feedparser_compat.message_from_bytes(raw)) == _tree(expected)


@backport_only
def test_parsegen_is_the_function_the_backport_rebinds() -> None:
    """``_parsegen`` must be a plain generator function that finds ``re`` in its globals and
    calls ``re.compile`` and ``re.escape`` (for the boundary): what is rebound."""
    parsegen = FeedParser._parsegen
    assert inspect.isgeneratorfunction(parsegen)
    assert parsegen.__globals__ is feedparser.__dict__
    assert parsegen.__globals__["re"] is re
    names = parsegen.__code__.co_names
    assert {"re", "compile", "escape"} <= set(names)
    assert feedparser_compat.Parser._parsegen.__globals__["re"] is feedparser_compat.BoundaryMatch


@backport_only
def test_every_boundary_pattern_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each regex the parser compiles for a boundary must be the pattern BoundaryMatch knows
    (``(?P<sep>`` + separator + TAIL): a changed pattern would be compiled with the separator
    unescaped, and would match wrongly."""
    made: list[object] = []
    real = feedparser_compat.BoundaryMatch.compile.__func__  # type: ignore[attr-defined]

    def recording(cls: type, pattern: str, flags: int = 0) -> object:
        found = real(cls, pattern, flags)
        made.append(found)
        return found

    monkeypatch.setattr(feedparser_compat.BoundaryMatch, "compile", classmethod(recording))
    for raw in _mails():
        feedparser_compat.message_from_bytes(raw)
    assert made
    assert all(isinstance(m, feedparser_compat.BoundaryMatch) for m in made), made


@backport_only
def test_no_regex_is_compiled_per_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[str] = []
    real_compile = re.compile
    monkeypatch.setattr(re, "compile", lambda p, f=0: compiled.append(p) or real_compile(p, f))
    for raw in _mails():
        feedparser_compat.message_from_bytes(raw)
    assert compiled == []


@pytest.mark.skipif(feedparser_compat.BACKPORTED, reason="Python < 3.13: the backport is used")
def test_newer_pythons_use_the_standard_library_as_it_is() -> None:
    assert feedparser_compat.Parser is FeedParser
    assert sys.version_info >= (3, 13)
