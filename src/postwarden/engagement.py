"""Engagement tracking, the I/O side: instrument messages at send time, record opens, clicks
and unsubscribes when the tracking routes are hit.

The pure part (tokens, HTML rewriting, human-or-machine rules) is ``postwarden.domain.tracking``.

Sending: ``prepare`` gives, for one message being built, its instrumented HTML (and plain
text where ``track_text_links`` is on) and the RFC 8058 headers. A content is instrumented
once (with message id 0) and cut into a skeleton; each message only signs its own tokens into
it, so a broadcast does not rescan its HTML per recipient.

Recording: ``record_open``, ``record_click`` and ``unsubscribe`` verify their token first
(no database for a forged one), then record one ``Fact`` through ``recorder.record`` with
``source="tracking"`` and evidence ``{"machine", "rule", "ip_class", "user_agent"}``. The
full IP address is never stored. A click resolves its URL from the message's own stored
content, re-instrumented (deterministic): the token only carries a link index, so only a URL
that was in that message can ever be a redirect target.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from postwarden.domain import clock, tracking
from postwarden.domain.status import Kind
from postwarden.outbound.channels.email import compose
from postwarden.settings import Settings
from postwarden.store import recorder, suppression
from postwarden.store import tables as t

__all__ = [
    "PIXEL",
    "LinkCache",
    "OpenHit",
    "Prepared",
    "category_tag",
    "links_of",
    "prepare",
    "prepare_batch",
    "record_click",
    "record_open",
    "record_opens",
    "unsubscribable",
    "unsubscribe",
]

PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
"""A 1x1 transparent GIF (43 bytes)."""

SOURCE = "tracking"
OPEN_BUCKET_SECONDS = 60
"""Opens of one message within the same minute (and the same verdict) are one event."""
CLICK_BUCKET_SECONDS = 60
"""Clicks on one link within the same minute (and the same verdict) are one event."""
UNSUBSCRIBE_POST = "List-Unsubscribe=One-Click"

m = t.messages


# --------------------------------------------------------------------------------------------
# Sending side
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)  # a few categories, one token per message sent
def category_tag(category: str) -> int:
    """The ``extra`` of an unsubscribe token: 32 bits of the category's digest, so a token
    minted for one category never unsubscribes a message of another."""
    return int.from_bytes(hashlib.sha256(category.encode()).digest()[:4], "big")


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


def _cut(body: str, tokens: dict[str, tuple[str, int]]) -> tuple[tuple[str, ...], tuple]:
    if not tokens:
        return (body,), ()
    pattern = re.compile("|".join(re.escape(tok) for tok in tokens))
    parts: list[str] = []
    slots: list[tuple[str, int]] = []
    last = 0
    for hit in pattern.finditer(body):
        parts.append(body[last : hit.start()])
        slots.append(tokens[hit.group(0)])
        last = hit.end()
    parts.append(body[last:])
    return tuple(parts), tuple(slots)


def _fill(cut: tuple[tuple[str, ...], tuple], secret: bytes, message_id: int) -> str:
    parts, slots = cut
    out = [parts[0]]
    for (purpose, extra), part in zip(slots, parts[1:], strict=True):
        out.append(tracking.sign(secret, purpose, message_id, extra))
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
    links: tuple[str, ...] = ()
    if html is not None:
        done = tracking.instrument_html(html, base_url=base_url, secret=secret, message_id=0)
        links = done.links
        tokens = {tracking.sign(secret, "c", 0, i): ("c", i) for i in range(len(links))}
        tokens[tracking.sign(secret, "o", 0, 0)] = ("o", 0)
        html_cut = _cut(done.html, tokens)
    if text is not None and text_links:
        new_text, more = tracking.instrument_text(
            text, base_url=base_url, secret=secret, message_id=0, first_index=len(links)
        )
        tokens = {
            tracking.sign(secret, "c", 0, len(links) + i): ("c", len(links) + i)
            for i in range(len(more))
        }
        text_cut = _cut(new_text, tokens)
        links += more
    made = _Skeleton(html_cut, text_cut, links)
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
        token = tracking.sign(secret, "u", message_id, category_tag(category))
        headers = (
            ("List-Unsubscribe", f"<{base}/t/u/{token}>"),
            ("List-Unsubscribe-Post", UNSUBSCRIBE_POST),
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
    undecided = {c.account_id for c in claimed if c.track is None}
    account_tracks: dict[int, bool] = {}
    if undecided:
        account_tracks = dict(
            conn.execute(
                select(t.accounts.c.id, t.accounts.c.tracking).where(t.accounts.c.id.in_(undecided))
            ).all()
        )
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


# --------------------------------------------------------------------------------------------
# Recording side
# --------------------------------------------------------------------------------------------


def links_of(secret: bytes, base_url: str, html: str | None, text: str | None) -> tuple[str, ...]:
    """The tracked URLs of a content, in link-index order: its HTML links, then its plain-text
    links (indices a message gets only when ``track_text_links`` was on when it was built)."""
    base = base_url.rstrip("/")
    links: tuple[str, ...] = ()
    if html is not None:
        links = tracking.instrument_html(
            html, base_url=base, secret=secret, message_id=0, track_opens=False
        ).links
    if text is not None:
        _, more = tracking.instrument_text(
            text, base_url=base, secret=secret, message_id=0, first_index=len(links)
        )
        links += more
    return links


class LinkCache:
    """Content id -> its tracked URLs (contents never change), bounded."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._links: OrderedDict[int, tuple[str, ...]] = OrderedDict()

    def get(self, content_id: int) -> tuple[str, ...] | None:
        found = self._links.get(content_id)
        if found is not None:
            self._links.move_to_end(content_id)
        return found

    def put(self, content_id: int, links: tuple[str, ...]) -> None:
        self._links[content_id] = links
        if len(self._links) > self.size:
            self._links.popitem(last=False)


def _delivered_at(conn: Connection, message_id: int) -> datetime | None:
    return conn.scalar(
        select(func.min(t.events.c.occurred_at)).where(
            t.events.c.message_id == message_id,
            t.events.c.kind.in_((Kind.DELIVERED.value, Kind.RELAYED.value)),
        )
    )


def _seconds(since: datetime | None, now: datetime) -> float | None:
    return None if since is None else (now - since).total_seconds()


def _evidence(verdict: tracking.Classification, ip: str, user_agent: str) -> dict[str, Any]:
    return {
        "machine": verdict.verdict is tracking.Verdict.MACHINE,
        "rule": verdict.rule,
        "ip_class": tracking.ip_class(ip or ""),
        "user_agent": (user_agent or "")[:200],
    }


def _detail(what: str, verdict: tracking.Classification) -> str:
    return f"{what} by a {verdict.verdict.value} ({verdict.rule})"


def _bucket(now: datetime, seconds: int) -> int:
    return int(now.timestamp()) // seconds


def open_key(now: datetime, machine: bool) -> str:
    return f"open:{_bucket(now, OPEN_BUCKET_SECONDS)}:{'m' if machine else 'h'}"


@dataclass(frozen=True, slots=True)
class OpenHit:
    """One pixel fetch, as the web layer saw it."""

    token: str
    user_agent: str
    ip: str
    at: datetime


def record_opens(
    conn: Connection, secret: bytes, hits: Sequence[OpenHit], *, policy: suppression.Policy
) -> list[bool]:
    """Record many pixel fetches in one transaction (the web layer's group commit); for each,
    False (and no write) when its token is not one of ours, its message does not exist, or it
    is a reload already counted (per message, minute and verdict)."""
    found = [tracking.verify(secret, "o", hit.token) for hit in hits]
    ids = sorted({f[0] for f in found if f is not None})
    if not ids:
        return [False] * len(hits)
    existing = set(conn.scalars(select(m.c.id).where(m.c.id.in_(ids))))
    delivered = dict(
        conn.execute(
            select(t.events.c.message_id, func.min(t.events.c.occurred_at))
            .where(
                t.events.c.message_id.in_(existing),
                t.events.c.kind.in_((Kind.DELIVERED.value, Kind.RELAYED.value)),
            )
            .group_by(t.events.c.message_id)
        ).all()
    )
    facts: list[recorder.Fact] = []
    slots: list[int | None] = []
    for hit, ok in zip(hits, found, strict=True):
        if ok is None or ok[0] not in existing:
            slots.append(None)
            continue
        message_id = ok[0]
        verdict = tracking.classify_open(
            user_agent=hit.user_agent,
            ip=hit.ip,
            seconds_after_delivery=_seconds(delivered.get(message_id), hit.at),
        )
        data = _evidence(verdict, hit.ip, hit.user_agent)
        slots.append(len(facts))
        facts.append(
            recorder.Fact(
                message_id,
                Kind.OPENED,
                SOURCE,
                occurred_at=hit.at,
                detail=_detail("opened", verdict),
                data=data,
                dedupe_key=open_key(hit.at, data["machine"]),
            )
        )
    outcomes = recorder.record(conn, facts, policy=policy) if facts else []
    return [False if i is None else outcomes[i].recorded for i in slots]


def record_open(
    conn: Connection,
    secret: bytes,
    token: str,
    *,
    user_agent: str,
    ip: str,
    policy: suppression.Policy,
    now: datetime | None = None,
) -> bool:
    """Record one pixel fetch (see ``record_opens``)."""
    hit = OpenHit(token, user_agent, ip, now or clock.now())
    return record_opens(conn, secret, [hit], policy=policy)[0]


def _other_links_within(
    conn: Connection, message_id: int, index: int, now: datetime, seconds: float = 2.0
) -> int:
    rows = conn.scalars(
        select(t.events.c.data).where(
            t.events.c.message_id == message_id,
            t.events.c.kind == Kind.CLICKED.value,
            t.events.c.occurred_at >= now - timedelta(seconds=seconds),
        )
    )
    return len({d.get("link") for d in rows if d and d.get("link") != index})


def resolve_click(
    conn: Connection, secret: bytes, token: str, *, base_url: str, cache: LinkCache
) -> tuple[int, int, str] | None:
    """(message id, link index, URL) for a click token of ours whose link exists in that
    message's content; None otherwise (forged, truncated, out-of-range index, no message)."""
    found = tracking.verify(secret, "c", token)
    if found is None:
        return None
    message_id, index = found
    content_id = conn.scalar(select(m.c.content_id).where(m.c.id == message_id))
    if content_id is None:
        return None
    links = cache.get(content_id)
    if links is None:
        row = conn.execute(
            select(t.contents.c.html, t.contents.c.text).where(t.contents.c.id == content_id)
        ).first()
        if row is None:
            return None
        links = links_of(secret, base_url, row.html, row.text)
        cache.put(content_id, links)
    if index >= len(links):
        return None
    return message_id, index, links[index]


def record_click(
    conn: Connection,
    secret: bytes,
    token: str,
    *,
    user_agent: str,
    ip: str,
    method: str,
    policy: suppression.Policy,
    base_url: str,
    cache: LinkCache,
    now: datetime | None = None,
) -> str | None:
    """Record a followed link and return where it goes; None (and no write) when the token
    does not name a link of an existing message."""
    resolved = resolve_click(conn, secret, token, base_url=base_url, cache=cache)
    if resolved is None:
        return None
    message_id, index, url = resolved
    now = now or clock.now()
    seconds = _seconds(_delivered_at(conn, message_id), now)
    verdict = tracking.classify_click(
        user_agent=user_agent,
        ip=ip,
        method=method,
        seconds_after_delivery=seconds,
        other_links_clicked_within_2s=_other_links_within(conn, message_id, index, now),
    )
    data = _evidence(verdict, ip, user_agent) | {"link": index, "method": method.upper()}
    bucket = _bucket(now, CLICK_BUCKET_SECONDS)
    recorder.record(
        conn,
        [
            recorder.Fact(
                message_id,
                Kind.CLICKED,
                SOURCE,
                occurred_at=now,
                detail=_detail(f"link {index} followed", verdict),
                data=data,
                dedupe_key=f"click:{index}:{bucket}:{'m' if data['machine'] else 'h'}",
            )
        ],
        policy=policy,
    )
    return url


def unsubscribable(
    conn: Connection, secret: bytes, token: str, *, transactional: Iterable[str] = ()
) -> tuple[int, str] | None:
    """(message id, category) when ``token`` is an unsubscribe token of ours for an existing
    message of that category outside the transactional ones; None otherwise (no database
    for a forged token). For the confirmation page, which never unsubscribes."""
    found = tracking.verify(secret, "u", token)
    if found is None:
        return None
    message_id, tag = found
    row = conn.execute(select(m.c.id, m.c.category).where(m.c.id == message_id)).first()
    if row is None or category_tag(row.category) != tag or row.category in set(transactional):
        return None
    return row.id, row.category


def unsubscribe(
    conn: Connection,
    secret: bytes,
    token: str,
    *,
    policy: suppression.Policy,
    transactional: Iterable[str] = (),
    user_agent: str = "",
    ip: str = "",
    now: datetime | None = None,
) -> bool:
    """One-click unsubscribe (RFC 8058): an UNSUBSCRIBED event on the message, which
    suppresses the address for the message's category. Idempotent (one event per message;
    the suppression is kept once). False for a token that is not ours, a message that does
    not exist or whose category differs from the token's, and transactional categories."""
    target = unsubscribable(conn, secret, token, transactional=transactional)
    if target is None:
        return False
    message_id, category = target
    scope = f"category {category!r}" if category else "all categories"
    recorder.record(
        conn,
        [
            recorder.Fact(
                message_id,
                Kind.UNSUBSCRIBED,
                SOURCE,
                occurred_at=now or clock.now(),
                detail=f"the recipient unsubscribed from {scope} (one-click, RFC 8058)",
                data={
                    "ip_class": tracking.ip_class(ip or ""),
                    "user_agent": (user_agent or "")[:200],
                },
                dedupe_key="unsubscribe",
            )
        ],
        policy=policy,
    )
    return True
