"""The status machine: one transition table, pure, no I/O.

A message's *headline* status is derived from its events. ``apply`` folds one event into the
state; ``fold`` replays a whole timeline (sorted by when each fact happened), which is how a
late-arriving event that happened earlier is put in its place, so arrival order never changes
the outcome. See ../shared/design/STATUS.md for the vocabulary and the rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from postwarden import errors


class Status(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DEFERRED = "deferred"
    SENT = "sent"
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    FAILED = "failed"
    DROPPED = "dropped"
    BLOCKED = "blocked"
    DUPLICATE = "duplicate"
    NO_CHANNEL = "no_channel"
    CANCELLED = "cancelled"


class Kind(StrEnum):
    """Every kind of fact Postwarden learns about a message."""

    ATTEMPT = "attempt"  # a delivery attempt began
    DEFERRED = "deferred"  # temporary failure, another attempt is scheduled
    RELAYED = "relayed"  # a relay or provider accepted it
    DELIVERED = "delivered"  # the recipient's server accepted it
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"  # refused for good by the recipient's side
    EXPIRED = "expired"  # retries ran out
    FAILED = "failed"  # Postwarden refused to send it
    DROPPED = "dropped"
    BLOCKED = "blocked"
    DUPLICATE = "duplicate"
    NO_CHANNEL = "no_channel"
    CANCELLED = "cancelled"
    DELAYED = "delayed"  # a delay notice: the remote side is still trying
    COMPLAINED = "complained"  # the recipient reported it as spam
    UNSUBSCRIBED = "unsubscribed"


class Flag(StrEnum):
    BOUNCED_AFTER_DELIVERY = "bounced_after_delivery"
    DELAYED = "delayed"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"


FINAL = frozenset(
    {
        Status.BOUNCED,
        Status.FAILED,
        Status.DROPPED,
        Status.BLOCKED,
        Status.DUPLICATE,
        Status.NO_CHANNEL,
        Status.CANCELLED,
    }
)
"""Statuses that never change again (a resend is a new message)."""

UNDELIVERED = frozenset(
    {Status.BOUNCED, Status.FAILED, Status.DROPPED, Status.BLOCKED, Status.NO_CHANNEL}
)
"""What the undelivered report and the mail log's "only undelivered" filter show."""

IN_FLIGHT = frozenset({Status.PENDING, Status.SENDING, Status.DEFERRED})
"""On its way: waiting for an attempt, being attempted, or to be attempted again (the sender's
own loop). Such a message has not left: it is never purged and never resent, its attachments
are kept, and a fact that happened earlier than the last one applied is simply applied."""

IN_FLIGHT_VALUES = tuple(sorted(s.value for s in IN_FLIGHT))
""":data:`IN_FLIGHT` as the strings the store keeps."""

_RECIPIENT_SIDE = (Status.SENT, Status.DELIVERED, Status.OPENED, Status.CLICKED)
_INTAKE = frozenset(
    {Status.FAILED, Status.DROPPED, Status.BLOCKED, Status.DUPLICATE, Status.NO_CHANNEL}
)


def _forward_of(status: Status) -> frozenset[Status]:
    return frozenset(_RECIPIENT_SIDE[_RECIPIENT_SIDE.index(status) + 1 :])


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.SENDING, Status.DEFERRED, Status.CANCELLED, Status.BOUNCED})
    | _INTAKE
    | frozenset(_RECIPIENT_SIDE),
    Status.SENDING: frozenset({Status.SENDING, Status.DEFERRED, Status.BOUNCED, Status.FAILED})
    | frozenset(_RECIPIENT_SIDE),
    Status.DEFERRED: frozenset({Status.SENDING, Status.BOUNCED, Status.FAILED})
    | frozenset(_RECIPIENT_SIDE),
    Status.SENT: _forward_of(Status.SENT) | {Status.BOUNCED},
    Status.DELIVERED: _forward_of(Status.DELIVERED),
    Status.OPENED: _forward_of(Status.OPENED),
    Status.CLICKED: frozenset(),
    **{final: frozenset() for final in FINAL},
}
"""The one transition table: the headline moves from a status only to the ones listed."""

TARGET: dict[Kind, Status | None] = {
    Kind.ATTEMPT: Status.SENDING,
    Kind.DEFERRED: Status.DEFERRED,
    Kind.RELAYED: Status.SENT,
    Kind.DELIVERED: Status.DELIVERED,
    Kind.OPENED: Status.OPENED,
    Kind.CLICKED: Status.CLICKED,
    Kind.BOUNCED: Status.BOUNCED,
    Kind.EXPIRED: Status.BOUNCED,
    Kind.FAILED: Status.FAILED,
    Kind.DROPPED: Status.DROPPED,
    Kind.BLOCKED: Status.BLOCKED,
    Kind.DUPLICATE: Status.DUPLICATE,
    Kind.NO_CHANNEL: Status.NO_CHANNEL,
    Kind.CANCELLED: Status.CANCELLED,
    Kind.DELAYED: None,
    Kind.COMPLAINED: None,
    Kind.UNSUBSCRIBED: None,
}
"""The headline each kind of event moves towards (None: it only adds a flag or a record)."""

_FLAG_OF: dict[Kind, Flag] = {
    Kind.COMPLAINED: Flag.COMPLAINED,
    Kind.UNSUBSCRIBED: Flag.UNSUBSCRIBED,
}

DECISIONS: dict[Status, Kind] = {decided: Kind(decided.value) for decided in _INTAKE}
"""What intake can decide instead of queueing a message, and the kind of the event that
records it (of the same name): a message is stored in the status of its decision, which is
where this event moves a new message (tests/unit/test_status.py checks it)."""

DECISION_REASONS: dict[Status, str] = {
    Status.FAILED: "invalid_address",
    Status.DROPPED: "suppressed",
    Status.BLOCKED: "blocked",
    Status.DUPLICATE: "duplicate",
    Status.NO_CHANNEL: "no_channel",
}
"""The reason each intake decision gives its message and its event."""

USER_ACTIONS = frozenset({Kind.CANCELLED})
"""Events a person asks for: refused with InvalidTransition instead of being ignored."""


@dataclass(frozen=True, slots=True)
class State:
    status: Status = Status.PENDING
    flags: frozenset[Flag] = field(default_factory=frozenset)

    def moved(self, other: State) -> bool:
        return self.status is not other.status


def apply(state: State, kind: Kind) -> State:
    """Fold one event into the state; never moves the headline backwards."""
    target = TARGET[kind]
    flags = state.flags
    if kind in _FLAG_OF:
        flags = flags | {_FLAG_OF[kind]}
    if kind is Kind.DELAYED and state.status in (Status.SENT, *IN_FLIGHT):
        flags = flags | {Flag.DELAYED}
    if target is None:
        return State(state.status, flags)
    if target in TRANSITIONS[state.status]:
        if target is not Status.DEFERRED and target is not Status.SENDING:
            flags = flags - {Flag.DELAYED}
        return State(target, flags)
    if kind in USER_ACTIONS:
        raise errors.InvalidTransition(
            f"cannot be {target.value}: the message is already {state.status.value}"
        )
    if target is Status.BOUNCED and state.status in _RECIPIENT_SIDE:
        flags = flags | {Flag.BOUNCED_AFTER_DELIVERY}
    return State(state.status, flags)


def fold(kinds: Iterable[Kind], start: State | None = None) -> State:
    """Replay a timeline (in the order the facts happened) from ``start``."""
    state = start or State()
    for kind in kinds:
        state = apply(state, kind)
    return state


def resend_refusal(current: str, had_attachments: bool) -> str | None:
    """Why a message cannot be resent, in the words the API, the UI and the explanations all
    show; None when it can be. A resend is a new message with the original's content: a message
    still in flight would go out twice, and attachments are not kept once a message has left."""
    if had_attachments:
        return (
            "Its attachments are not kept once it has left: send it again with its "
            "attachments from your application."
        )
    state = Status(current)
    if state in IN_FLIGHT:
        if Status.CANCELLED in TRANSITIONS[state]:
            return f"It is still {state.value}: wait for it, or cancel it."
        return f"It is still {state.value}: wait until it is delivered or has failed."
    return None
