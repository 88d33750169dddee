"""Engagement tracking, what comes back: opens, clicks and one-click unsubscribes.

``record_open``, ``record_click`` and ``unsubscribe`` verify their token first (no database
for a forged one), then record one ``Fact`` through ``recorder.record`` with
``source="tracking"`` and evidence ``{"machine", "rule", "ip_class", "user_agent"}``. The full
IP address is never stored. A click resolves its URL from the message's own stored content,
re-instrumented (deterministic): the token only carries a link index, so only a URL that was
in that message can ever be a redirect target.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from postwarden.domain import bots, clock, links, tokens
from postwarden.domain.status import Kind
from postwarden.store import events, messages, recorder, suppression

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


def _seconds(since: datetime | None, now: datetime) -> float | None:
    return None if since is None else (now - since).total_seconds()


def _evidence(verdict: bots.Classification, ip: str, user_agent: str) -> dict[str, Any]:
    return {
        "machine": verdict.verdict is bots.Verdict.MACHINE,
        "rule": verdict.rule,
        "ip_class": bots.ip_class(ip or ""),
        "user_agent": (user_agent or "")[:200],
    }


def _detail(what: str, verdict: bots.Classification) -> str:
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
    found = [tokens.verify(secret, "o", hit.token) for hit in hits]
    ids = sorted({f[0] for f in found if f is not None})
    if not ids:
        return [False] * len(hits)
    existing = messages.existing(conn, ids)
    delivered = events.handed_over_at(conn, existing)
    facts: list[recorder.Fact] = []
    slots: list[int | None] = []
    for hit, ok in zip(hits, found, strict=True):
        if ok is None or ok[0] not in existing:
            slots.append(None)
            continue
        message_id = ok[0]
        verdict = bots.classify_open(
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
    clicks = events.clicks_since(conn, message_id, now - timedelta(seconds=seconds))
    return len({d.get("link") for d in clicks if d and d.get("link") != index})


def resolve_click(
    conn: Connection, secret: bytes, token: str, *, base_url: str, cache: LinkCache
) -> tuple[int, int, str] | None:
    """(message id, link index, URL) for a click token of ours whose link exists in that
    message's content; None otherwise (forged, truncated, out-of-range index, no message)."""
    found = tokens.verify(secret, "c", token)
    if found is None:
        return None
    message_id, index = found
    content_id = messages.content_id_of(conn, message_id)
    if content_id is None:
        return None
    known = cache.get(content_id)
    if known is None:
        bodies = messages.bodies_of(conn, content_id)
        if bodies is None:
            return None
        known = links.links_of(secret, base_url, *bodies)
        cache.put(content_id, known)
    if index >= len(known):
        return None
    return message_id, index, known[index]


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
    seconds = _seconds(events.handed_over_at(conn, [message_id]).get(message_id), now)
    verdict = bots.classify_click(
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
    found = tokens.verify(secret, "u", token)
    if found is None:
        return None
    message_id, tag = found
    category = messages.category_of(conn, message_id)
    if category is None or tokens.category_tag(category) != tag or category in set(transactional):
        return None
    return message_id, category


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
                    "ip_class": bots.ip_class(ip or ""),
                    "user_agent": (user_agent or "")[:200],
                },
                dedupe_key="unsubscribe",
            )
        ],
        policy=policy,
    )
    return True
