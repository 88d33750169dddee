"""The standard library's MIME parser with CPython's multipart boundary fix backported.

The one place Postwarden reaches into the ``email`` package's internals. Before Python 3.13
(CPython gh-106628) ``FeedParser._parsegen`` compiled a regex for each multipart's boundary,
about 80 µs each since every mail has a boundary of its own: a sixth of the time of a parse.
Here the same function runs with ``re`` rebound (for it only, not for the process) to a matcher
that tests a boundary line without a regex. On Python 3.13 and later the standard library's
parser is used as it is.

What this relies on (tests/unit/test_feedparser_compat.py checks each, and fails when the
standard library changes under it): ``FeedParser._parsegen`` is a plain function whose globals
hold ``re``; it builds its boundary regex as ``re.compile('(?P<sep>' + re.escape(separator) +
TAIL)`` and only calls ``match`` on it.
"""

from __future__ import annotations

import re
import sys
from email import feedparser
from email.feedparser import FeedParser
from email.message import Message
from email.policy import compat32
from types import FunctionType

__all__ = ["BACKPORTED", "message_from_bytes"]

BACKPORTED = sys.version_info < (3, 13)
"""Whether the backport is in use (Python < 3.13); later, the standard library's own parser."""


class BoundaryMatch:
    """A multipart boundary line test without a regex of its own (what gh-106628 does)."""

    __slots__ = ("separator",)
    _END = re.compile(r"(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$")
    HEAD = "(?P<sep>"
    TAIL = r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"

    def __init__(self, separator: str) -> None:
        self.separator = separator

    def match(self, line: str) -> re.Match[str] | None:
        if not line.startswith(self.separator):
            return None
        return self._END.match(line, len(self.separator))

    @classmethod
    def compile(cls, pattern: str, flags: int = 0) -> object:
        """``re.compile`` as the parser sees it: its boundary pattern (built with the
        separator left verbatim, see ``escape``) gives a matcher, anything else a regex."""
        if pattern.startswith(cls.HEAD) and pattern.endswith(cls.TAIL):
            return cls(pattern[len(cls.HEAD) : -len(cls.TAIL)])
        return re.compile(pattern, flags)

    @staticmethod
    def escape(text: str) -> str:
        return text


if BACKPORTED:

    class Parser(FeedParser):
        """The standard library's parser, its boundary regexes replaced by BoundaryMatch:
        the same code, run with ``re`` bound to it."""

        _parsegen = FunctionType(
            FeedParser._parsegen.__code__,
            {**feedparser.__dict__, "re": BoundaryMatch},
            "_parsegen",
            FeedParser._parsegen.__defaults__,
            FeedParser._parsegen.__closure__,
        )

else:
    Parser = FeedParser  # type: ignore[misc]


def message_from_bytes(data: bytes) -> Message:
    """What ``BytesParser(policy=compat32).parsebytes`` gives (8-bit bytes kept as surrogate
    escapes), with the boundary matching above."""
    parser = Parser(policy=compat32)
    parser.feed(data.decode("ascii", "surrogateescape"))
    return parser.close()
