"""Engagement tracking at send time: each message's open pixel, click redirects and RFC 8058
List-Unsubscribe headers.

``prepare`` gives, for one message being built, its instrumented HTML (and plain text where
``track_text_links`` is on) and the headers. A content is instrumented once (with message id 0)
and cut into a skeleton; each message only signs its own tokens into it, so a broadcast does
not rescan its HTML per recipient. Recording what comes back is ``postwarden.inbound.tracking``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from postwarden.domain import links, tokens
from postwarden.outbound.channels.email import compose
from postwarden.settings import Settings
from postwarden.store import accounts


@dataclass(frozen=True, slots=True)
class Prepared:
    html: str | None = None  # None: the content's own HTML
    text: str | None = None  # None: the content's own text
    headers: tuple[tuple[str, str], ...] = ()

    def build_args(self) -> dict[str, Any]:
        """Keyword arguments for ``compose.Composer.build``."""
        return {"html": self.html, "text": self.text, "extra_headers": self.headers}


NOTHING = Prepared()


@dataclass(frozen=True, slots=True)
class _Skeleton:
    """Instrumented bodies cut at every token: parts[0] + tok0 + parts[1] + tok1 + ..."""

    html: tuple[tuple[str, ...], tuple[tuple[str, int], ...]] | None
    text: tuple[tuple[str, ...], tuple[tuple[str, int], ...]] | None
    links: tuple[str, ...]


_SKELETONS: OrderedDict[tuple[Any, ...], _Skeleton] = OrderedDict()
_SKELETON_CACHE = 256


def _cut(body: str, marks: dict[str, tuple[str, int]]) -> tuple[tuple[str, ...], tuple]:
    if not marks:
        return (body,), ()
    pattern = re.compile("|".join(re.escape(tok) for tok in marks))
    parts: list[str] = []
    slots: list[tuple[str, int]] = []
    last = 0
    for hit in pattern.finditer(body):
        parts.append(body[last : hit.start()])
        slots.append(marks[hit.group(0)])
        last = hit.end()
    parts.append(body[last:])
    return tuple(parts), tuple(slots)


def _fill(cut: tuple[tuple[str, ...], tuple], secret: bytes, message_id: int) -> str:
    parts, slots = cut
    out = [parts[0]]
    for (purpose, extra), part in zip(slots, parts[1:], strict=True):
        out.append(tokens.sign(secret, purpose, message_id, extra))
        out.append(part)
    return "".join(out)


def _skeleton(
    secret: bytes, base_url: str, content_id: int, html: str | None, text: str | None, text_links
) -> _Skeleton:
    key = (secret, base_url, content_id, html, text, text_links)
    found = _SKELETONS.get(key)
    if found is not None:
        _SKELETONS.move_to_end(key)
        return found
    html_cut = text_cut = None
    found_links: tuple[str, ...] = ()
    if html is not None:
        done = links.instrument_html(html, base_url=base_url, secret=secret, message_id=0)
        found_links = done.links
        marks = {tokens.sign(secret, "c", 0, i): ("c", i) for i in range(len(found_links))}
        marks[tokens.sign(secret, "o", 0, 0)] = ("o", 0)
        html_cut = _cut(done.html, marks)
    if text is not None and text_links:
        new_text, more = links.instrument_text(
            text, base_url=base_url, secret=secret, message_id=0, first_index=len(found_links)
        )
        marks = {
            tokens.sign(secret, "c", 0, len(found_links) + i): ("c", len(found_links) + i)
            for i in range(len(more))
        }
        text_cut = _cut(new_text, marks)
        found_links += more
    made = _Skeleton(html_cut, text_cut, found_links)
    _SKELETONS[key] = made
    if len(_SKELETONS) > _SKELETON_CACHE:
        _SKELETONS.popitem(last=False)
    return made


def prepare(
    *,
    settings: Settings,
    secret: bytes,
    message_id: int,
    content_id: int,
    content: compose.Content,
    track: bool,
    broadcast_id: int | None,
    category: str,
) -> Prepared:
    """What tracking changes in one message being built: its HTML (open pixel, click
    redirects), its text (click redirects, when configured), and the List-Unsubscribe headers
    (RFC 8058) on broadcast mail outside the transactional categories."""
    base = settings.tracking_base_url.rstrip("/")
    html = text = None
    if track and (content.html is not None or settings.track_text_links):
        skeleton = _skeleton(
            secret, base, content_id, content.html, content.text, settings.track_text_links
        )
        if skeleton.html is not None:
            html = _fill(skeleton.html, secret, message_id)
        if skeleton.text is not None and skeleton.text[1]:
            text = _fill(skeleton.text, secret, message_id)
    headers: tuple[tuple[str, str], ...] = ()
    if broadcast_id is not None and category not in settings.transactional:
        token = tokens.sign(secret, "u", message_id, tokens.category_tag(category))
        headers = (
            ("List-Unsubscribe", f"<{base}/t/u/{token}>"),
            ("List-Unsubscribe-Post", tokens.UNSUBSCRIBE_POST),
        )
    if html is None and text is None and not headers:
        return NOTHING
    return Prepared(html, text, headers)


def prepare_batch(
    conn: Connection,
    claimed: Sequence[Any],
    contents: dict[int, compose.Content],
    settings: Settings,
    secret: bytes,
) -> dict[int, Prepared]:
    """``prepare`` for each claimed message (``queue.Claimed``) about to be built: one query
    for the accounts' tracking setting, where a message does not decide for itself."""
    account_tracks = accounts.tracking_of(conn, {c.account_id for c in claimed if c.track is None})
    return {
        c.id: prepare(
            settings=settings,
            secret=secret,
            message_id=c.id,
            content_id=c.content_id,
            content=contents[c.content_id],
            track=c.track if c.track is not None else account_tracks.get(c.account_id, True),
            broadcast_id=c.broadcast_id,
            category=c.category,
        )
        for c in claimed
    }
