"""Apply stored inbound mails: parse each one, find the message it is about, record what it says.

The server only stores raw mails (state "new"). Here each is claimed ("processing"), parsed with
``dsn.parse``, matched to messages (:mod:`postwarden.inbound.match`), and its facts go through
``recorder.record`` like every other source: success -> delivered, delay -> delayed, bounce ->
bounced (with the classifier's reason), complaint -> complained (and the address suppressed).
Each mail ends in one of the states of :mod:`postwarden.store.inbound_queue`:

- "done": its facts are recorded (or it has none to record: an auto-reply, a not-spam report);
- "unverified": it names an address Postwarden mailed, but no signed token proves it is about
  a message Postwarden sent. Anyone can write such a bounce, so it is kept for review beside
  its candidate message and changes no status and suppresses nothing;
- "unmatched": it is about no message we know;
- "error": it could not be read. The exception's text is kept with the raw mail and shown to
  the operators; a parser fault is a fact, never a silent "unmatched".
"""

from __future__ import annotations

import hashlib
import logging
import traceback
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from postwarden.domain import addresses, classify
from postwarden.domain.status import Kind
from postwarden.inbound import match
from postwarden.inbound.mail import dsn
from postwarden.runtime import Parts
from postwarden.store import db, inbound_queue, matching, recorder, suppression
from postwarden.store.inbound_queue import DONE, ERROR, UNMATCHED, UNVERIFIED, Outcome, Stored

__all__ = ["BATCH", "GATHER", "process_pending"]

log = logging.getLogger(__name__)

_RECIPIENT_KIND = {
    dsn.Kind.SUCCESS: Kind.DELIVERED,
    dsn.Kind.DELAY: Kind.DELAYED,
    dsn.Kind.BOUNCE: Kind.BOUNCED,
}
_COMPLAINT_TYPES = frozenset({"abuse", "fraud", "other"})
_UNSUBSCRIBE_TYPES = frozenset({"opt-out", "unsubscribe"})
"""ARF feedback types. Others (``not-spam``, ``auth-failure``, ``virus``) are not the
recipient asking to stop: they are kept but change no message."""


def process_pending(parts: Parts, limit: int = 200) -> int:
    """Apply up to ``limit`` stored mails; returns how many were taken (blocking: run it in a
    thread). A mail that cannot be read or applied ends "error" with the reason.

    The batch is read in one query, parsed outside any transaction (a parser fault marks only
    that mail "error"), matched with one query for all the tokens it quotes, and applied in
    one write transaction (one ``recorder.record`` for all its facts). Should that
    transaction fail, each mail of the batch is applied again on its own."""
    with parts.engine.begin() as conn:
        ids = inbound_queue.claim(conn, limit)
    if not ids:
        return 0
    policy = suppression.Policy(parts.settings.soft_bounce_limit, parts.settings.soft_bounce_days)
    with db.reader(parts.engine).connect() as conn:
        mails = inbound_queue.read(conn, ids, dsn.READ_BYTES)
    parsed: list[tuple[Stored, dsn.Report]] = []
    failed: list[tuple[Stored, BaseException]] = []
    for mail in mails:
        try:
            parsed.append((mail, dsn.parse(mail.raw)))  # pure; kept out of any transaction
        except Exception as exc:
            log.error("inbound mail %d could not be read: %s", mail.id, _describe(exc))
            failed.append((mail, exc))
    if failed:
        _record_failures(parts, failed)
    if not parsed:
        return len(ids)
    try:
        _apply_batch(parts, parsed, policy)
    except Exception:
        log.exception("a batch of %d inbound mails failed; applying them one by one", len(parsed))
        for mail, report in parsed:
            try:
                _apply_one(parts, mail, report, policy)
            except Exception as exc:
                log.exception("inbound mail %d could not be applied", mail.id)
                _record_failures(parts, [(mail, exc)])
    return len(ids)


def _describe(exc: BaseException) -> str:
    """The exception's text, and where it was raised (for whoever fixes the parser)."""
    text = f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (in {last.name}, {last.filename.rpartition('/')[2]}:{last.lineno})"
    return text


def _record_failures(parts: Parts, failed: list[tuple[Stored, BaseException]]) -> None:
    """Mark mails "error" with the exception's text, for the account whose bounce domain
    received each (so its operators see it) and the message its VERP address names, if any.
    Should even that fail, the mails are claimed again later (see CLAIM_TIMEOUT)."""
    try:
        with db.reader(parts.engine).connect() as conn:
            outcomes = [_failure(conn, parts.secret, mail, exc) for mail, exc in failed]
        with parts.engine.begin() as conn:
            inbound_queue.finish(conn, outcomes)
    except Exception:
        log.exception("cannot record that %d inbound mail(s) could not be read", len(failed))


def _failure(conn: Connection, secret: bytes, mail: Stored, exc: BaseException) -> Outcome:
    error = _describe(exc)
    target = match.by_token(conn, match.tokens(secret, mail.rcpt_to))
    if target is not None:
        return Outcome(mail.id, ERROR, None, target.account_id, target.id, error)
    account_id = _only(match.accounts_of(conn, mail.rcpt_to))
    return Outcome(mail.id, ERROR, None, account_id, None, error)


def _only(account_ids: list[int]) -> int | None:
    return account_ids[0] if len(account_ids) == 1 else None


def _apply_batch(
    parts: Parts, parsed: list[tuple[Stored, dsn.Report]], policy: suppression.Policy
) -> None:
    """Match every mail of the batch (reading only), then record all their facts in one
    write transaction: the SQLite write lock, which the server's stores wait for, is held
    only while writing."""
    domains: dict[frozenset[str], list[int]] = {}
    outcomes: list[Outcome] = []
    facts: list[recorder.Fact] = []
    named = [_named(parts.secret, mail, report) for mail, report in parsed]
    with db.reader(parts.engine).connect() as conn:
        known = match.prefetch(conn, named)
        for (mail, report), tokens in zip(parsed, named, strict=True):
            outcome, mail_facts = _plan(conn, mail, report, tokens, known, domains)
            outcomes.append(outcome)
            facts.extend(mail_facts)
    with parts.engine.begin() as conn:
        _record(conn, facts, policy)
        inbound_queue.finish(conn, outcomes)


def _apply_one(parts: Parts, mail: Stored, report: dsn.Report, policy: suppression.Policy) -> None:
    with parts.engine.begin() as conn:
        inbound_queue.hold(conn, mail.id)
        outcome, facts = _plan(conn, mail, report, _named(parts.secret, mail, report))
        _record(conn, facts, policy)
        inbound_queue.finish(conn, [outcome])


def _record(conn: Connection, facts: list[recorder.Fact], policy: suppression.Policy) -> None:
    if facts:
        floors = matching.last_attempts(conn, sorted({f.message_id for f in facts}))
        recorder.record(
            conn, [_not_before(fact, floors.get(fact.message_id)) for fact in facts], policy=policy
        )


def _named(secret: bytes, mail: Stored, report: dsn.Report) -> match.Named:
    return match.tokens(
        secret, mail.rcpt_to, report.returned_headers, (report.original_message_id,)
    )


def _plan(
    conn: Connection,
    mail: Stored,
    report: dsn.Report,
    named: match.Named,
    known: dict[int, match.Target | None] | None = None,
    domains: dict[frozenset[str], list[int]] | None = None,
) -> tuple[Outcome, list[recorder.Fact]]:
    """What one report comes to: its outcome and its facts (not yet recorded). ``named``:
    the messages it names by token; ``known``: messages already read by id; ``domains``:
    the accounts of each set of bounce domains, cached within a batch."""
    kind = report.kind.value
    target = match.by_token(conn, named, known)
    recipients = list(report.recipients)
    if not recipients and target is not None and report.kind is dsn.Kind.COMPLAINT:
        # ARF reports often redact the recipient; the quoted token still names the message.
        recipients = [
            dsn.Recipient(target.to_addr, None, dsn.Kind.COMPLAINT, None, None, "", None, None)
        ]
    actionable = [r for r in recipients if _fact_kind(report, r) is not None]
    if target is not None:
        if len(actionable) > 1:
            # One message has one recipient: keep the report's lines about it, if it names it.
            own = [r for r in actionable if _is_address_of(r, target.to_addr)]
            actionable = own or actionable
        facts = [_fact(target, report, r, mail) for r in actionable]
        state = DONE if recipients or report.kind is dsn.Kind.AUTOREPLY else UNMATCHED
        return Outcome(mail.id, state, kind, target.account_id, target.id), facts
    account_ids = match.accounts_of(conn, mail.rcpt_to, domains)
    for r in actionable:
        # No token: whatever the report says, it proves nothing (anyone can write it).
        found = match.candidate(conn, account_ids, (r.address, r.original))
        if found is not None:
            log.info(
                "inbound mail %d names %s without a token: kept for review (message %d)",
                mail.id,
                r.address,
                found.id,
            )
            return Outcome(mail.id, UNVERIFIED, kind, found.account_id, found.id), []
    done = report.kind is dsn.Kind.AUTOREPLY or bool(recipients and not actionable)
    return Outcome(mail.id, DONE if done else UNMATCHED, kind, _only(account_ids)), []


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
    target: match.Target, report: dsn.Report, r: dsn.Recipient, mail: Stored
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
        occurred_at=mail.received_at,
        reason=reason[:32] if reason else None,
        hard=hard,
        code=_text(code[:16]) if code else None,
        detail=_text(detail),
        data={k: _text(v) for k, v in data.items() if v is not None},
        dedupe_key=dedupe_key(report, r),
        inbound_id=mail.id,
    )


def _text(value: Any) -> Any:
    """A NUL in a bounce is noise: it must not make the bounce unrecordable."""
    return inbound_queue.storable(value) if isinstance(value, str) else value


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


def _is_address_of(r: dsn.Recipient, to_addr: str) -> bool:
    wanted = to_addr.lower()
    return any(a and addresses.normalize(a) == wanted for a in (r.address, r.original))


BATCH = 500
"""Mails applied per round (one write transaction)."""

GATHER = 0.2
"""Seconds the worker waits after a wake before applying, so a stream of mails (each one wakes
it) is applied in batches instead of one small round per mail. Each round has fixed costs (a
claim, reads, two commits whose SQLite write lock holds up the server's stores): at 1,000
mails/s, rounds of up to 500 mails applied 5% more per second than rounds of up to 200."""
