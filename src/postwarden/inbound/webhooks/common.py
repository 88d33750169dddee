"""What every provider's events come to, whatever the provider calls them.

Each provider module (``sns``, ``sendgrid``, ``mailgun``, ``postmark``) verifies a request
(raising :class:`Refused`: nothing of it may be recorded) and parses it into :class:`Event`s:
pure functions of the request's bytes, headers and the account's configuration. Bounces are
classified by the same classifier and explanations as bounce mails (``domain.classify``): the
provider's own words and status code give the reason, and the provider's own verdict
(permanent or not) decides whether it can be hard at all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from postwarden.domain import bots, classify
from postwarden.domain.status import Kind


class Refused(Exception):
    """A request that is not the provider's, or not any more (401: no or wrong credentials;
    403: a forged, stale or replayed signature, an address or topic not allowed)."""

    def __init__(self, status: Literal[401, 403], detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Event:
    """One provider event about one recipient of one message."""

    event_id: str  # the provider's id of the event: a duplicate is recorded once
    event_type: str  # the provider's own name for it
    kind: Kind | None  # what it is to Postwarden; None: nothing to record (kept, ignored)
    occurred_at: datetime | None
    recipient: str | None
    provider_message_id: str | None = None
    message_ids: tuple[str, ...] = ()  # the Message-IDs it quotes (Postwarden's own token)
    token: str | None = None  # X-Postwarden-Id, or a custom argument carrying it
    reason: str | None = None
    hard: bool | None = None
    code: str | None = None
    detail: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)  # the provider's event, whole


TOKEN_ARGUMENT = "postwarden_id"
"""The custom argument (SendGrid unique args, Mailgun user variables, Postmark metadata) that
carries a message's X-Postwarden-Id, for relays set up to pass it on."""


def bounce(
    text: str | None, status: str | None, *, permanent: bool, default_status: str | None = None
) -> tuple[str, bool, str | None, str]:
    """(reason, hard, code, detail) of a provider's bounce: the classifier reads the remote
    server's words and status code (or, when the provider gives none, the status its own
    bounce type stands for); a bounce the provider calls temporary is never hard."""
    code = status or default_status
    verdict = classify.classify(text or "", status=code)
    return (
        verdict.reason,
        verdict.hard and permanent,
        code,
        (text or "").strip() or (verdict.explanation),
    )


def engagement(kind: Kind, user_agent: str, ip: str, provider_says_machine: bool | None) -> bool:
    """Whether an open or click was a machine's: the provider's own flag where it has one,
    else the same rules as Postwarden's own tracking (``domain.bots``)."""
    if provider_says_machine is not None:
        return provider_says_machine
    if kind is Kind.OPENED:
        verdict = bots.classify_open(user_agent=user_agent, ip=ip, seconds_after_delivery=None)
    else:
        verdict = bots.classify_click(
            user_agent=user_agent, ip=ip, method="GET", seconds_after_delivery=None
        )
    return verdict.verdict is bots.Verdict.MACHINE


def when(value: Any) -> datetime | None:
    """An ISO 8601 text or epoch seconds, as an aware UTC datetime (None if unreadable)."""
    try:
        if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
            return datetime.fromtimestamp(float(value), UTC)
        if isinstance(value, str) and value:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def digest(*parts: Any) -> str:
    """An event id for events the provider gives none: the same event, the same id."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return "h:" + hashlib.sha256(text.encode()).hexdigest()[:40]


def load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ValueError(f"the body is not JSON: {exc}") from exc
