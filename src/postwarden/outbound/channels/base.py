"""The channel contract: what the dispatcher hands a channel and what it gets back.

The dispatcher is generic: it claims a channel's due messages (``messages.channel``), asks the
channel to build them, hands what was built to the channel, and records the verdicts. Every
channel-specific judgement happens inside the channel: an SMTP reply is classified by the
email channel, a provider's error code by the SMS channel, so a verdict arrives already
classified (outcome, reason, hard or soft, when to retry) with its evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Literal, Protocol, TypeVar

from sqlalchemy import Connection

from postwarden.store.queue import Claimed

Outcome = Literal["sent", "delivered", "deferred", "bounced", "failed"]
"""``sent``: a relay or provider took it; ``delivered``: the recipient's own server did;
``deferred``: a temporary failure, to be retried; ``bounced``: the recipient's side refused it
for good; ``failed``: Postwarden could not send it (nothing the recipient's side said)."""

P = TypeVar("P", covariant=True)


@dataclass(frozen=True, slots=True)
class Outgoing(Generic[P]):
    """One message built and ready to go."""

    message_id: int
    to: str  # an email address or an E.164 number
    payload: P  # what the channel sends (email: envelope and bytes; SMS: text and sender)
    keep: bytes | None = None
    """Bytes to store if the attempt is deferred, so a retry sends exactly the same message
    without building it again (the email channel's RFC 5322 bytes)."""


@dataclass(frozen=True, slots=True)
class Evidence:
    """What an attempt went through, kept as the attempt's record."""

    started_at: datetime  # aware UTC
    duration_ms: int
    via: str  # "relay", "mx", "twilio", "vonage", "smpp": what took the attempt
    remote: str | None  # "host:port" or the provider's endpoint actually talked to
    transcript: str  # SMTP conversation or provider request/response; never a secret


@dataclass(frozen=True, slots=True)
class Verdict:
    """What became of one message's attempt (or of building it), already classified."""

    message_id: int
    outcome: Outcome
    reason: str | None = None  # a bounce reason of domain.classify's vocabulary
    hard: bool | None = None  # a definitive address failure: suppress the recipient
    code: str | None = None  # the enhanced status code ("5.1.1") or the provider's error code
    reply_code: int | None = None  # the SMTP reply code or HTTP status, when there was one
    detail: str = ""  # the remote side's own words, or what went wrong
    retry_after: float | None = None  # seconds the remote side asked us to wait
    provider_message_id: str | None = None  # the id receipts and webhooks will name
    evidence: Evidence | None = None  # None: nothing was attempted (the build failed)


class Channel(Protocol):
    """A way to reach recipients (email, SMS), keyed in the registry by ``name``."""

    name: str

    def build(self, conn: Connection, claimed: Sequence[Claimed]) -> list[Outgoing | Verdict]:
        """Build each claimed message (in a thread, on a read-only connection): an
        :class:`Outgoing`, or a ``failed`` :class:`Verdict` for a message that cannot be built
        (the failure of that message alone, never of its batch). One item per claimed message,
        in the same order."""
        ...

    async def send(self, batch: Sequence[Outgoing]) -> list[Verdict]:
        """Attempt each built message; one verdict per item, in the same order."""
        ...

    async def aclose(self) -> None: ...
