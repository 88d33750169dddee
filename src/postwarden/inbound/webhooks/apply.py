"""Provider events, once verified and parsed: kept, matched to their messages, recorded.

In one transaction: the request's token is remembered (a replay is refused), every event not
kept before is kept (``provider_events``: a duplicate, by the provider's event id, changes
nothing), each one is matched to the account's message it is about
(:func:`match.for_provider`) and its fact recorded through ``recorder.record`` like every
other source's, with the provider's event id as its dedupe key. A late bounce after delivery
acts as a bounce mail does (the address suppressed, the message flagged "bounced after
delivery" by the status machine). An event that matches no message is kept "unmatched" and
shown for review, never dropped; one that means nothing to Postwarden (SendGrid's
"processed", SES's "Send") is kept "ignored".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from postwarden.domain import clock, verp
from postwarden.inbound import match
from postwarden.inbound.webhooks.common import Event, Refused
from postwarden.store import provider_events, recorder, suppression
from postwarden.store.provider_events import APPLIED, IGNORED, UNMATCHED


@dataclass(frozen=True, slots=True)
class Summary:
    received: int
    duplicates: int
    applied: int
    unmatched: int
    ignored: int


def apply(
    conn: Connection,
    *,
    account_id: int,
    provider: str,
    events: Sequence[Event],
    secret: bytes,
    policy: suppression.Policy,
    nonce: str | None = None,
) -> Summary:
    """Keep, match and record ``events`` (see the module's docstring); Refused (403) when
    ``nonce``, the signed request's own token, was seen before."""
    if nonce is not None and not provider_events.first_use(conn, provider, nonce):
        raise Refused(403, "this signed request was received before (a replay)")
    seen = provider_events.known(conn, account_id, provider, [e.event_id for e in events])
    new: list[Event] = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            new.append(event)
    targets = match.for_provider(
        conn,
        account_id,
        [
            match.ProviderEvidence(
                e.provider_message_id,
                match.tokens(
                    secret,
                    (),
                    {verp.TOKEN_HEADER.lower(): e.token} if e.token else None,
                    e.message_ids,
                ),
                e.recipient,
                e.occurred_at,
            )
            for e in new
        ],
    )
    rows: list[provider_events.Row] = []
    facts: dict[str, recorder.Fact] = {}
    for event, target in zip(new, targets, strict=True):
        if event.kind is None:
            state = IGNORED
        elif target is None:
            state = UNMATCHED
        else:
            state = APPLIED
            facts[event.event_id] = _fact(provider, event, target)
        rows.append(
            provider_events.Row(
                event.event_id,
                event.event_type,
                event.occurred_at,
                event.recipient,
                event.provider_message_id,
                state,
                target.id if target else None,
                target.matched_by if target else None,
                event.detail,
                event.payload,
            )
        )
    kept = provider_events.keep(conn, account_id, provider, rows)
    # An event kept meanwhile by a concurrent request is that request's to record.
    recording = [fact for event_id, fact in facts.items() if event_id in kept]
    if recording:
        recorder.record(conn, recording, policy=policy)
    states = [r.state for r in rows if r.event_id in kept]
    return Summary(
        len(events),
        len(events) - len(kept),
        states.count(APPLIED),
        states.count(UNMATCHED),
        states.count(IGNORED),
    )


def _fact(provider: str, event: Event, target: match.Target) -> recorder.Fact:
    data: dict[str, Any] = {
        "provider": provider,
        "event_type": event.event_type,
        "recipient": event.recipient,
        "provider_message_id": event.provider_message_id,
        "matched_by": target.matched_by,
        **event.data,
    }
    assert event.kind is not None
    return recorder.Fact(
        target.id,
        event.kind,
        provider,
        occurred_at=event.occurred_at or clock.now(),
        reason=event.reason[:32] if event.reason else None,
        hard=event.hard,
        code=event.code[:16] if event.code else None,
        detail=(event.detail or "")[:2000] or None,
        data={k: v for k, v in data.items() if v is not None},
        dedupe_key=f"{provider}:{event.event_id}"[:200],
    )
