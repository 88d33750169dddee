"""Apply stored inbound mails: parse each one, find the message it is about, record what it says.

The server only stores raw mails (state "new"). Here each is claimed ("processing"), parsed with
``dsn.parse`` and matched to messages, and its facts go through ``recorder.record`` like every
other source: success -> delivered, delay -> delayed, bounce -> bounced (with the classifier's
reason), complaint -> complained (and the address suppressed). The mail ends "done",
"unmatched" (about no message we know) or "error" (the exception's text; the raw stays).

Matching, strongest evidence first:

1. the VERP token of the envelope recipient (``b+<token>@<bounce domain>``);
2. the token quoted back in the returned headers: ``X-Postwarden-Id``, or the Message-ID
   ``<token@bounce domain>``;
3. the recipient's address: the most recent message to it within 30 days, in the accounts
   whose bounce domain received the mail.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, and_, func, or_, select, update

from postwarden.domain import addresses, classify, clock, verp
from postwarden.domain.status import Kind, Status
from postwarden.inbound.mail import dsn
from postwarden.runtime import Parts
from postwarden.store import batch, db, recorder, suppression
from postwarden.store import tables as t

__all__ = ["ERROR", "MATCH_WINDOW", "claim", "process_pending"]

log = logging.getLogger(__name__)

NEW = "new"
PROCESSING = "processing"
DONE = "done"
UNMATCHED = "unmatched"
ERROR = "error"

MATCH_WINDOW = timedelta(days=30)
"""How far back an address-only match looks for the message a report is about."""

_ATTEMPTED = tuple(
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

_RECIPIENT_KIND = {
    dsn.Kind.SUCCESS: Kind.DELIVERED,
    dsn.Kind.DELAY: Kind.DELAYED,
    dsn.Kind.BOUNCE: Kind.BOUNCED,
}
_COMPLAINT_TYPES = frozenset({"abuse", "fraud", "other"})
_UNSUBSCRIBE_TYPES = frozenset({"opt-out", "unsubscribe"})
"""ARF feedback types. Others (``not-spam``, ``auth-failure``, ``virus``) are not the
recipient asking to stop: they are kept but change no message."""

im = t.inbound_mails
m = t.messages


@dataclass(frozen=True, slots=True)
class _Target:
    id: int
    account_id: int
    to_addr: str
    matched_by: str


# region claiming


CLAIM_TIMEOUT = timedelta(minutes=5)
"""A mail still "processing" this long after it was claimed was left by a process that died:
it is claimed again (applying it twice changes nothing: its events are deduplicated)."""


def claim(conn: Connection, limit: int) -> list[int]:
    """Take up to ``limit`` new mails (oldest first) and mark them "processing"; on
    PostgreSQL another process skips the rows this one holds."""
    now = clock.now()
    pick = (
        select(im.c.id)
        .where(
            or_(
                im.c.state == NEW,
                and_(im.c.state == PROCESSING, im.c.claimed_at < now - CLAIM_TIMEOUT),
            )
        )
        .order_by(im.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed = conn.scalars(
        update(im)
        .where(im.c.id.in_(pick.scalar_subquery()))
        .values(state=PROCESSING, claimed_at=now)
        .returning(im.c.id)
    )
    return sorted(claimed)


def process_pending(parts: Parts, limit: int = 200) -> int:
    """Apply up to ``limit`` stored mails; returns how many were taken (blocking: run it in a
    thread). A mail that cannot be applied ends "error" with the reason; nothing is raised.

    The batch is read in one query, parsed outside any transaction (a parser fault marks only
    that mail "error"), matched with one query for all the tokens it quotes, and applied in
    one write transaction (one ``recorder.record`` for all its facts). Should that
    transaction fail, each mail of the batch is applied again on its own, as before."""
    with parts.engine.begin() as conn:
        ids = claim(conn, limit)
    if not ids:
        return 0
    policy = suppression.Policy(parts.settings.soft_bounce_limit, parts.settings.soft_bounce_days)
    with db.reader(parts.engine).connect() as conn:
        rows = {
            row.id: row
            for row in conn.execute(
                select(
                    im.c.id,
                    func.substr(im.c.raw, 1, dsn.READ_BYTES).label("raw"),
                    im.c.rcpt_to,
                    im.c.received_at,
                ).where(im.c.id.in_(ids))
            )
        }
    parsed: list[tuple[int, Any, dsn.Report]] = []
    present = [i for i in ids if i in rows]
    # SQLite's substr of an empty blob is NULL.
    reports = _parse_each([bytes(rows[i].raw or b"") for i in present])
    for inbound_id, report in zip(present, reports, strict=True):
        if isinstance(report, BaseException):
            log.error("inbound mail %d could not be parsed: %s", inbound_id, report)
            _mark_error(parts, inbound_id, report)
            continue
        parsed.append((inbound_id, rows[inbound_id], report))
    if not parsed:
        return len(ids)
    try:
        _apply_batch(parts, parsed, policy)
    except Exception:
        log.exception("a batch of %d inbound mails failed; applying them one by one", len(parsed))
        for inbound_id, row, report in parsed:
            try:
                _apply_one(parts, inbound_id, row, report, policy)
            except Exception as exc:
                log.exception("inbound mail %d could not be applied", inbound_id)
                _mark_error(parts, inbound_id, exc)
    return len(ids)


def _parse_each(raws: list[bytes]) -> list[dsn.Report | BaseException]:
    """Parse each mail; a fault is returned in its place, so it marks only that mail."""
    out: list[dsn.Report | BaseException] = []
    for mail in raws:
        try:
            out.append(dsn.parse(mail))  # pure; kept out of any transaction
        except Exception as exc:
            out.append(exc)
    return out


def _mark_error(parts: Parts, inbound_id: int, exc: BaseException) -> None:
    text = f"{type(exc).__name__}: {exc}"[:2000]
    try:
        with parts.engine.begin() as conn:
            conn.execute(update(im).where(im.c.id == inbound_id).values(state=ERROR, error=text))
    except Exception:
        log.exception("inbound mail %d: cannot even record the error", inbound_id)


def _apply_batch(
    parts: Parts, parsed: list[tuple[int, Any, dsn.Report]], policy: suppression.Policy
) -> None:
    """Match every mail of the batch (reading only), then record all their facts in one
    write transaction: the SQLite write lock, which the server's stores wait for, is held
    only while writing."""
    domains: dict[frozenset[str], list[int]] = {}
    planned: list[tuple[int, str, str, int | None, None]] = []
    facts: list[recorder.Fact] = []
    named = [_token_ids(parts.secret, row.rcpt_to or (), rep) for _i, row, rep in parsed]
    with db.reader(parts.engine).connect() as conn:
        known = _prefetch(conn, named)
        for (inbound_id, row, report), tokens in zip(parsed, named, strict=True):
            state, account_id, mail_facts = _plan(
                conn,
                parts.secret,
                report,
                inbound_id=inbound_id,
                rcpt_to=list(row.rcpt_to or ()),
                received_at=row.received_at,
                named=tokens,
                known=known,
                domains=domains,
            )
            facts.extend(mail_facts)
            planned.append((inbound_id, state, report.kind.value, account_id, None))
    with parts.engine.begin() as conn:
        if facts:
            floors = _attempt_times(conn, sorted({f.message_id for f in facts}))
            facts = [_not_before(fact, floors.get(fact.message_id)) for fact in facts]
            recorder.record(conn, facts, policy=policy)
        batch.dialect_of(conn).update_many(
            conn, "inbound_mails", ("state", "kind", "account_id", "error"), planned
        )


def _apply_one(
    parts: Parts, inbound_id: int, row: Any, report: dsn.Report, policy: suppression.Policy
) -> None:
    with parts.engine.begin() as conn:
        # A write first: SQLite takes its write lock now instead of failing a later upgrade.
        conn.execute(update(im).where(im.c.id == inbound_id).values(state=PROCESSING))
        state, account_id = apply_report(
            conn,
            parts.secret,
            report,
            inbound_id=inbound_id,
            rcpt_to=list(row.rcpt_to or ()),
            received_at=row.received_at,
            policy=policy,
        )
        conn.execute(
            update(im)
            .where(im.c.id == inbound_id)
            .values(state=state, kind=report.kind.value, account_id=account_id, error=None)
        )


# endregion

# region applying one mail


def apply_report(
    conn: Connection,
    secret: bytes,
    report: dsn.Report,
    *,
    inbound_id: int | None,
    rcpt_to: Sequence[str],
    received_at: datetime,
    policy: suppression.Policy,
) -> tuple[str, int | None]:
    """Record the facts of one parsed report; returns the mail's final state and account."""
    state, account_id, facts = _plan(
        conn,
        secret,
        report,
        inbound_id=inbound_id,
        rcpt_to=rcpt_to,
        received_at=received_at,
    )
    if facts:
        floors = _attempt_times(conn, sorted({f.message_id for f in facts}))
        facts = [_not_before(fact, floors.get(fact.message_id)) for fact in facts]
        recorder.record(conn, facts, policy=policy)
    return state, account_id


def _plan(
    conn: Connection,
    secret: bytes,
    report: dsn.Report,
    *,
    inbound_id: int | None,
    rcpt_to: Sequence[str],
    received_at: datetime,
    named: list[tuple[int | None, str]] | None = None,
    known: dict[int, _Target | None] | None = None,
    domains: dict[frozenset[str], list[int]] | None = None,
) -> tuple[str, int | None, list[recorder.Fact]]:
    """Match one report to messages: its final state, account and facts (not yet recorded).
    ``named`` is what :func:`_token_ids` gave for this mail, if already known; ``known``
    holds messages already read by id (None: no such message); ``domains`` caches the
    accounts of each set of bounce domains within a batch."""
    account_ids = _accounts_of(conn, rcpt_to, domains)
    if named is None:
        named = _token_ids(secret, rcpt_to, report)
    by_token = _match_token(conn, named, known)
    recipients = list(report.recipients)
    if not recipients and by_token is not None and report.kind is dsn.Kind.COMPLAINT:
        # ARF reports often redact the recipient; the quoted token still names the message.
        recipients = [
            dsn.Recipient(by_token.to_addr, None, dsn.Kind.COMPLAINT, None, None, "", None, None)
        ]
    actionable = [r for r in recipients if _fact_kind(report, r) is not None]
    if by_token is not None and len(actionable) > 1:
        # One message has one recipient: keep the report's lines about it, if it names it.
        own = [r for r in actionable if _is_address_of(r, by_token.to_addr)]
        actionable = own or actionable

    facts: list[recorder.Fact] = []
    targets: dict[int, _Target] = {}
    for recipient in actionable:
        # A complaint suppresses an address, so it must name its message by a signed token:
        # anyone can mail abuse@, and an address match alone would let them suppress anybody.
        complaint = recipient.kind is dsn.Kind.COMPLAINT
        target = by_token or (None if complaint else _match_address(conn, account_ids, recipient))
        if target is None:
            log.info("inbound mail %s: no message for %s", inbound_id, recipient.address)
            continue
        targets[target.id] = target
        facts.append(_fact(target, report, recipient, inbound_id, received_at))

    if facts:
        account_id: int | None = next(iter(targets.values())).account_id
        return DONE, account_id, facts
    if by_token is not None:
        account_id = by_token.account_id
    else:
        account_id = account_ids[0] if len(account_ids) == 1 else None
    if report.kind is dsn.Kind.AUTOREPLY or (recipients and not actionable):
        return DONE, account_id, []  # an auto-reply, a not-spam report: nothing to apply
    return UNMATCHED, account_id, []


def _fact_kind(report: dsn.Report, recipient: dsn.Recipient) -> Kind | None:
    if recipient.kind is dsn.Kind.COMPLAINT:
        feedback = (report.feedback_type or "abuse").lower()
        if feedback in _COMPLAINT_TYPES:
            return Kind.COMPLAINED
        if feedback in _UNSUBSCRIBE_TYPES:
            return Kind.UNSUBSCRIBED
        return None
    return _RECIPIENT_KIND.get(recipient.kind)


def _fact(
    target: _Target,
    report: dsn.Report,
    r: dsn.Recipient,
    inbound_id: int | None,
    received_at: datetime,
) -> recorder.Fact:
    kind = _fact_kind(report, r)
    assert kind is not None
    complaint = r.kind is dsn.Kind.COMPLAINT
    reason: str | None = None
    hard: bool | None = None
    detail = r.diagnostic.strip() or None
    if kind in (Kind.BOUNCED, Kind.DELAYED):
        verdict = r.verdict or classify.classify(
            r.diagnostic or report.subject, status=r.status, reply_code=r.reply_code
        )
        reason = verdict.reason
        # A delay is never final; a bounce report is final even when its reason is soft.
        hard = verdict.hard if kind is Kind.BOUNCED else False
        detail = detail or verdict.explanation
    elif complaint:
        detail = f"the recipient reported the message ({report.feedback_type or 'abuse'})"
    code = r.status or (str(r.reply_code) if r.reply_code else None)
    data: dict[str, Any] = {
        "recipient": r.address,
        "original_recipient": r.original,
        "status": r.status,
        "reply_code": r.reply_code,
        "remote_mta": r.remote_mta,
        "feedback_type": report.feedback_type,
        "original_message_id": report.original_message_id,
        "subject": report.subject[:200] or None,
        "matched_by": target.matched_by,
    }
    return recorder.Fact(
        message_id=target.id,
        kind=kind,
        source="arf" if complaint else "dsn",
        occurred_at=received_at,
        reason=reason[:32] if reason else None,
        hard=hard,
        code=code[:16] if code else None,
        detail=detail,
        data={k: v for k, v in data.items() if v is not None},
        dedupe_key=dedupe_key(report, r),
        inbound_id=inbound_id,
    )


def dedupe_key(report: dsn.Report, r: dsn.Recipient) -> str:
    """The same report received twice gives the same key, so it is recorded once."""
    parts = [
        r.kind.value,
        r.address.lower(),
        r.status or "",
        str(r.reply_code or ""),
        " ".join(r.diagnostic.split()),
        report.original_message_id or "",
        report.feedback_type or "",
    ]
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return f"inbound:{digest[:48]}"


def _not_before(fact: recorder.Fact, floor: datetime | None) -> recorder.Fact:
    """A report is about an attempt, so it cannot precede it; keep the timeline in that order
    even when the report arrived while the dispatcher was still recording the attempt."""
    if floor is None or fact.occurred_at > floor:
        return fact
    return recorder.Fact(
        fact.message_id,
        fact.kind,
        fact.source,
        floor + timedelta(microseconds=1),
        fact.reason,
        fact.hard,
        fact.code,
        fact.detail,
        fact.data,
        fact.dedupe_key,
        fact.inbound_id,
    )


def _attempt_times(conn: Connection, message_ids: list[int]) -> dict[int, datetime]:
    rows = conn.execute(
        select(t.events.c.message_id, func.max(t.events.c.occurred_at))
        .where(t.events.c.message_id.in_(message_ids), t.events.c.source == "smtp")
        .group_by(t.events.c.message_id)
    )
    return {mid: when for mid, when in rows if when is not None}


# endregion

# region matching


def _accounts_of(
    conn: Connection,
    rcpt_to: Sequence[str],
    cache: dict[frozenset[str], list[int]] | None = None,
) -> list[int]:
    """The accounts whose bounce domain received the mail."""
    domains = {addresses.domain_of(r).strip("<>").lower().rstrip(".") for r in rcpt_to}
    domains.discard("")
    if not domains:
        return []
    if cache is not None:
        key = frozenset(domains)
        found = cache.get(key)
        if found is None:
            found = cache[key] = _accounts_of(conn, rcpt_to)
        return found
    return sorted(
        conn.scalars(
            select(t.accounts.c.id).where(func.lower(t.accounts.c.bounce_domain).in_(domains))
        )
    )


def _message(
    conn: Connection,
    message_id: int | None,
    matched_by: str,
    known: dict[int, _Target | None] | None = None,
) -> _Target | None:
    if message_id is None:
        return None
    if known is not None and message_id in known:
        found = known[message_id]
        return (
            None
            if found is None
            else _Target(found.id, found.account_id, found.to_addr, matched_by)
        )
    row = conn.execute(
        select(m.c.id, m.c.account_id, m.c.to_addr).where(m.c.id == message_id)
    ).first()
    return _target(row, matched_by) if row is not None else None


def _target(row: Row[Any], matched_by: str) -> _Target:
    return _Target(row.id, row.account_id, row.to_addr, matched_by)


def _token_ids(
    secret: bytes, rcpt_to: Sequence[str], report: dsn.Report
) -> list[tuple[int | None, str]]:
    """The message ids a mail names by a signed token, strongest evidence first."""
    named: list[tuple[int | None, str]] = []
    for rcpt in rcpt_to:
        local = rcpt.strip("<>").rpartition("@")[0].lower()
        if local.startswith(verp.PREFIX):
            named.append((verp.message_id_of(secret, rcpt), "verp"))
    headers = report.returned_headers
    token = headers.get(verp.TOKEN_HEADER.lower(), "").strip()
    if token:
        named.append((verp.message_id_of(secret, token), "header"))
    for value in (report.original_message_id, headers.get("message-id")):
        if value and "@" in value:
            named.append((verp.message_id_of(secret, value), "message-id"))
    return named


def _prefetch(
    conn: Connection, named: Sequence[list[tuple[int | None, str]]]
) -> dict[int, _Target | None]:
    """Read every message a batch of mails names by token (``named``: :func:`_token_ids` of
    each mail), in one query per chunk."""
    ids = sorted({mid for tokens in named for mid, _by in tokens if mid is not None})
    known: dict[int, _Target | None] = dict.fromkeys(ids)
    for start in range(0, len(ids), 900):
        for row in conn.execute(
            select(m.c.id, m.c.account_id, m.c.to_addr).where(m.c.id.in_(ids[start : start + 900]))
        ):
            known[row.id] = _target(row, "")
    return known


def _match_token(
    conn: Connection,
    named: list[tuple[int | None, str]],
    known: dict[int, _Target | None] | None = None,
) -> _Target | None:
    for message_id, matched_by in named:
        found = _message(conn, message_id, matched_by, known)
        if found is not None:
            return found
    return None


def _match_address(conn: Connection, account_ids: list[int], r: dsn.Recipient) -> _Target | None:
    if not account_ids:
        return None
    since = clock.now() - MATCH_WINDOW
    for address in filter(None, (r.address, r.original)):
        row = conn.execute(
            select(m.c.id, m.c.account_id, m.c.to_addr)
            .where(
                m.c.account_id.in_(account_ids),
                m.c.to_addr == addresses.normalize(address),
                m.c.channel == "email",
                m.c.status.in_(_ATTEMPTED),
                m.c.created_at >= since,
            )
            .order_by(m.c.created_at.desc(), m.c.id.desc())
            .limit(1)
        ).first()
        if row is not None:
            return _target(row, "address")
    return None


def _is_address_of(r: dsn.Recipient, to_addr: str) -> bool:
    wanted = to_addr.lower()
    return any(a and addresses.normalize(a) == wanted for a in (r.address, r.original))


# endregion


BATCH = 500
"""Mails applied per round (one write transaction)."""

GATHER = 0.2
"""Seconds the worker waits after a wake before applying, so a stream of mails (each one wakes
it) is applied in batches instead of one small round per mail. Each round has fixed costs (a
claim, reads, two commits whose SQLite write lock holds up the server's stores): at 1,000
mails/s, rounds of up to 500 mails applied 5% more per second than rounds of up to 200."""
