"""The channel contract: what a worker hands to a channel and what it gets back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

Outcome = Literal["accepted", "temporary", "permanent"]
Via = Literal["relay", "mx"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One built message ready to go; ``data`` is built once by the caller."""

    message_id: int
    mail_from: str  # per-message VERP return path, e.g. "b+Xy12ab@bounce.example.com"
    rcpt: str
    data: bytes  # the whole RFC 5322 message, CRLF line endings


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What became of one delivery attempt of one message."""

    message_id: int
    outcome: Outcome
    code: int | None  # SMTP reply code that decided it; None when there was no reply
    enhanced: str | None  # "5.1.1" parsed from the reply, if any
    text: str  # reply text, or a plain description of the network error
    remote: str | None  # "host:port" actually talked to
    via: Via  # relay -> 2xx means "sent"; mx -> 2xx means "delivered"
    transcript: str  # the SMTP conversation; never the body, never an AUTH secret
    started_at: datetime  # aware UTC
    duration_ms: int


class Channel(Protocol):
    name: str

    async def send_many(self, domain: str, batch: Sequence[Outgoing]) -> list[AttemptResult]:
        """Send ``batch`` (all to recipient ``domain``); one result per item, same order."""
        ...

    async def aclose(self) -> None: ...
