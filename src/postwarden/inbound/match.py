"""Which message an inbound event is about, and whether that is proven.

Shared by every inbound source: bounce mails (``inbound.mail.apply``) and providers' events
(``inbound.webhooks.apply``, see :func:`for_provider`). Evidence, strongest first:

1. a signed token naming the message: the VERP token of the envelope recipient
   (``b+<token>@<bounce domain>``), or the token Postwarden put in what it sent and the report
   quotes back (``X-Postwarden-Id``, the Message-ID ``<token@bounce domain>``). Only Postwarden
   can make one, so a report carrying it is about that message: it is acted on;
2. the recipient's address: the most recent message to it within :data:`WINDOW`, in the
   accounts whose bounce domain received the report. Anyone can write a bounce naming any
   address, so a message found this way is only a *candidate*: the report is kept and shown
   for review, and never changes a status or suppresses an address.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Connection

from postwarden.domain import addresses, clock, verp
from postwarden.domain.status import Status
from postwarden.store import matching

__all__ = [
    "ADDRESS",
    "PROVIDER_ID",
    "WINDOW",
    "Named",
    "ProviderEvidence",
    "Target",
    "accounts_of",
    "by_token",
    "candidate",
    "for_provider",
    "prefetch",
    "tokens",
]

WINDOW = timedelta(days=30)
"""How far back a match by address looks for the message a report may be about."""

ADDRESS = "address"
"""``Target.matched_by`` of a candidate found by address alone (not proven)."""

PROVIDER_ID = "provider_id"
"""``Target.matched_by`` of a message found by what its relay or provider calls it."""

ATTEMPTED = tuple(
    s.value
    for s in (
        Status.SENDING,
        Status.DEFERRED,
        Status.SENT,
        Status.DELIVERED,
        Status.OPENED,
        Status.CLICKED,
        Status.BOUNCED,
    )
)
"""Statuses of messages that could have reached the recipient's side (address matching)."""

Named = list[tuple[int | None, str]]
"""The message ids a report names by token (None: a token that does not verify), each with
what named it (``verp``, ``header``, ``message-id``), strongest first."""


@dataclass(frozen=True, slots=True)
class Target:
    """The message a report is about (``matched_by`` a token) or may be about (``address``)."""

    id: int
    account_id: int
    to_addr: str
    matched_by: str

    @property
    def verified(self) -> bool:
        return self.matched_by != ADDRESS


def tokens(
    secret: bytes,
    rcpt_to: Iterable[str],
    headers: Mapping[str, str] | None = None,
    message_ids: Iterable[str | None] = (),
) -> Named:
    """The message ids named by signed tokens: in the envelope recipients, in the returned
    headers (lower-case names) and in the quoted Message-IDs."""
    named: Named = []
    headers = headers or {}
    for rcpt in rcpt_to:
        local = rcpt.strip("<>").rpartition("@")[0].lower()
        if local.startswith(verp.PREFIX):
            named.append((verp.message_id_of(secret, rcpt), "verp"))
    token = headers.get(verp.TOKEN_HEADER.lower(), "").strip()
    if token:
        named.append((verp.message_id_of(secret, token), "header"))
    for value in (*message_ids, headers.get("message-id")):
        if value and "@" in value:
            named.append((verp.message_id_of(secret, value), "message-id"))
    return named


def prefetch(conn: Connection, named: Sequence[Named]) -> dict[int, Target | None]:
    """Every message a batch of reports names by token (``named``: :func:`tokens` of each),
    read at once; None for ids of no message (deleted since)."""
    ids = sorted({mid for each in named for mid, _by in each if mid is not None})
    found = matching.messages(conn, ids)
    return {
        mid: Target(row.id, row.account_id, row.to_addr, "") if (row := found.get(mid)) else None
        for mid in ids
    }


def by_token(
    conn: Connection, named: Named, known: Mapping[int, Target | None] | None = None
) -> Target | None:
    """The message of the strongest token that names one (``known``: from :func:`prefetch`)."""
    for message_id, matched_by in named:
        if message_id is None:
            continue
        if known is not None and message_id in known:
            found = known[message_id]
        else:
            row = matching.messages(conn, [message_id]).get(message_id)
            found = Target(row.id, row.account_id, row.to_addr, "") if row else None
        if found is not None:
            return replace(found, matched_by=matched_by)
    return None


def accounts_of(
    conn: Connection,
    rcpt_to: Iterable[str],
    cache: dict[frozenset[str], list[int]] | None = None,
) -> list[int]:
    """The accounts whose bounce domain received the report (``cache``: per set of domains,
    for a batch of reports)."""
    domains = frozenset(
        d for d in (addresses.domain_of(r).strip("<>").lower().rstrip(".") for r in rcpt_to) if d
    )
    if cache is None:
        return matching.accounts_for_domains(conn, domains)
    found = cache.get(domains)
    if found is None:
        found = cache[domains] = matching.accounts_for_domains(conn, domains)
    return found


def candidate(
    conn: Connection,
    account_ids: Sequence[int],
    recipients: Iterable[str | None],
    channel: str = "email",
) -> Target | None:
    """The message a report naming these addresses may be about: the most recent one sent to
    the first of them that Postwarden mailed within :data:`WINDOW`. Not proof (see above)."""
    if not account_ids:
        return None
    since = clock.now() - WINDOW
    for address in filter(None, recipients):
        row = matching.latest_to(
            conn,
            account_ids,
            addresses.normalize(address),
            channel=channel,
            statuses=ATTEMPTED,
            since=since,
        )
        if row is not None:
            return Target(row.id, row.account_id, row.to_addr, ADDRESS)
    return None


@dataclass(frozen=True, slots=True)
class ProviderEvidence:
    """What a provider's event says about the message it is about (see :func:`for_provider`)."""

    provider_message_id: str | None
    named: Named  # Postwarden's own tokens it quotes (:func:`tokens`)
    recipient: str | None
    occurred_at: datetime | None


def for_provider(
    conn: Connection,
    account_id: int,
    evidence: Sequence[ProviderEvidence],
    channel: str = "email",
) -> list[Target | None]:
    """The account's message each provider event is about, by the strongest evidence it has:
    the provider's id of the message (``messages.provider_message_id``, from the relay's 250
    reply), then Postwarden's own signed token it quotes (X-Postwarden-Id, the Message-ID, a
    custom argument), then, as a last resort, the latest message to its recipient sent before
    the event (within :data:`WINDOW`; ``matched_by`` says "address").

    Unlike a bounce mail, the event comes in a request the provider signed or authenticated,
    so a match by address is acted on; it is still said to be one wherever it is shown."""
    ids = [e.provider_message_id for e in evidence if e.provider_message_id]
    by_id = matching.by_provider_ids(conn, account_id, channel, ids) if ids else {}
    known = prefetch(conn, [e.named for e in evidence])
    found: list[Target | None] = []
    for e in evidence:
        hit = by_id.get(e.provider_message_id or "")
        if hit is not None:
            found.append(Target(hit.id, hit.account_id, hit.to_addr, PROVIDER_ID))
            continue
        target = by_token(conn, e.named, known)
        if target is not None and target.account_id == account_id:
            found.append(target)
            continue
        found.append(_by_address(conn, account_id, e, channel))
    return found


def _by_address(
    conn: Connection, account_id: int, e: ProviderEvidence, channel: str
) -> Target | None:
    if not e.recipient:
        return None
    at = e.occurred_at or clock.now()
    row = matching.latest_to(
        conn,
        [account_id],
        addresses.normalize(e.recipient),
        channel=channel,
        statuses=ATTEMPTED,
        since=at - WINDOW,
        until=at + timedelta(minutes=5),  # the provider's clock may run ahead of ours
    )
    return Target(row.id, row.account_id, row.to_addr, ADDRESS) if row is not None else None
