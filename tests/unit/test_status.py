"""The status machine, exhaustively: every status against every kind of event."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postwarden import errors
from postwarden.domain import status
from postwarden.domain.status import FINAL, TARGET, TRANSITIONS, Flag, Kind, State, Status

RECIPIENT_SIDE = [Status.SENT, Status.DELIVERED, Status.OPENED, Status.CLICKED]
LOOP = {Status.PENDING, Status.SENDING, Status.DEFERRED}
RANK = {s: i for i, s in enumerate(RECIPIENT_SIDE)}


def outcome(before: Status, kind: Kind) -> State | type[errors.InvalidTransition]:
    try:
        return status.apply(State(before), kind)
    except errors.InvalidTransition:
        return errors.InvalidTransition


def test_table_covers_every_status_and_kind() -> None:
    assert set(TRANSITIONS) == set(Status)
    assert set(TARGET) == set(Kind)


@pytest.mark.parametrize(("before", "kind"), list(itertools.product(Status, Kind)))
def test_every_status_against_every_event(before: Status, kind: Kind) -> None:
    result = outcome(before, kind)
    if result is errors.InvalidTransition:
        # Only a person's action can be refused; facts are always recorded.
        assert kind is Kind.CANCELLED and before is not Status.PENDING
        return
    assert isinstance(result, State)
    after = result.status
    assert after in (before, TARGET[kind])
    if before in FINAL:
        assert after is before, "a final status never changes"
    if before in RANK and after in RANK:
        assert RANK[after] >= RANK[before], "the recipient side never moves back"
    if before in RANK:
        assert after in RANK or after is Status.BOUNCED
        assert after is not Status.BOUNCED or before is Status.SENT
    late_bounce = (
        kind in (Kind.BOUNCED, Kind.EXPIRED) and before in RANK and before is not Status.SENT
    )
    assert (Flag.BOUNCED_AFTER_DELIVERY in result.flags) == late_bounce
    # Idempotent: the same fact again changes nothing (a person's repeated action is refused).
    if kind in status.USER_ACTIONS:
        assert outcome(after, kind) is errors.InvalidTransition
    else:
        assert status.apply(result, kind) == result


EXPECTED = {
    (Status.PENDING, Kind.ATTEMPT): Status.SENDING,
    (Status.SENDING, Kind.DEFERRED): Status.DEFERRED,
    (Status.DEFERRED, Kind.ATTEMPT): Status.SENDING,
    (Status.SENDING, Kind.RELAYED): Status.SENT,
    (Status.SENDING, Kind.DELIVERED): Status.DELIVERED,
    (Status.SENDING, Kind.BOUNCED): Status.BOUNCED,
    (Status.DEFERRED, Kind.EXPIRED): Status.BOUNCED,
    (Status.SENT, Kind.DELIVERED): Status.DELIVERED,
    (Status.SENT, Kind.BOUNCED): Status.BOUNCED,
    (Status.DELIVERED, Kind.BOUNCED): Status.DELIVERED,
    (Status.DELIVERED, Kind.RELAYED): Status.DELIVERED,
    (Status.OPENED, Kind.DELIVERED): Status.OPENED,
    (Status.CLICKED, Kind.OPENED): Status.CLICKED,
    (Status.BOUNCED, Kind.DELIVERED): Status.BOUNCED,
    (Status.PENDING, Kind.CANCELLED): Status.CANCELLED,
    (Status.PENDING, Kind.DROPPED): Status.DROPPED,
    (Status.SENT, Kind.COMPLAINED): Status.SENT,
    (Status.DELIVERED, Kind.DELAYED): Status.DELIVERED,
}


@pytest.mark.parametrize(("before", "kind", "after"), [(*k, v) for k, v in EXPECTED.items()])
def test_documented_moves(before: Status, kind: Kind, after: Status) -> None:
    assert status.apply(State(before), kind).status is after


def test_cancel_after_pending_is_refused_with_a_reason() -> None:
    with pytest.raises(errors.InvalidTransition, match="already sending"):
        status.apply(State(Status.SENDING), Kind.CANCELLED)


def test_flags_for_late_facts() -> None:
    state = status.fold([Kind.ATTEMPT, Kind.DELIVERED, Kind.BOUNCED, Kind.COMPLAINED])
    assert state.status is Status.DELIVERED
    assert state.flags == {Flag.BOUNCED_AFTER_DELIVERY, Flag.COMPLAINED}
    delayed = status.fold([Kind.ATTEMPT, Kind.RELAYED, Kind.DELAYED])
    assert delayed == State(Status.SENT, frozenset({Flag.DELAYED}))
    assert status.apply(delayed, Kind.DELIVERED) == State(Status.DELIVERED, frozenset())


def test_retry_loop_ends_in_expired_bounce() -> None:
    kinds = [Kind.ATTEMPT, Kind.DEFERRED] * 5 + [Kind.ATTEMPT, Kind.EXPIRED]
    assert status.fold(kinds).status is Status.BOUNCED


ENGAGEMENT = [
    Kind.RELAYED,
    Kind.DELIVERED,
    Kind.OPENED,
    Kind.CLICKED,
    Kind.DELAYED,
    Kind.COMPLAINED,
    Kind.UNSUBSCRIBED,
]


@given(st.lists(st.sampled_from(ENGAGEMENT), min_size=1, max_size=12), st.randoms())
def test_recipient_side_events_in_any_order_end_the_same(kinds: list[Kind], rnd: object) -> None:
    start = status.fold([Kind.ATTEMPT])
    shuffled = list(kinds)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    in_order = status.fold(kinds, start)
    out_of_order = status.fold(shuffled, start)
    assert in_order.status is out_of_order.status
    assert in_order.flags - {Flag.DELAYED} == out_of_order.flags - {Flag.DELAYED}
    progressed = [TARGET[k] for k in kinds if TARGET[k] in RANK]
    assert in_order.status is max(progressed, key=RANK.__getitem__, default=Status.SENDING)


@given(st.lists(st.sampled_from([k for k in Kind if k is not Kind.CANCELLED]), max_size=15))
def test_any_timeline_never_regresses(kinds: list[Kind]) -> None:
    state = State()
    for kind in kinds:
        after = status.apply(state, kind)
        if state.status in FINAL:
            assert after.status is state.status
        if state.status in RANK and after.status in RANK:
            assert RANK[after.status] >= RANK[state.status]
        assert state.flags - {Flag.DELAYED} <= after.flags
        state = after


def test_in_flight_is_the_senders_own_loop() -> None:
    """In flight: every status an attempt may still start from or be under way in, none final
    and none on the recipient's side."""
    assert status.IN_FLIGHT == {s for s in Status if Status.SENDING in TRANSITIONS[s]}
    assert set(status.IN_FLIGHT_VALUES) == {s.value for s in status.IN_FLIGHT}
    assert not status.IN_FLIGHT & (FINAL | set(RECIPIENT_SIDE))


@pytest.mark.parametrize(("decided", "kind"), list(status.DECISIONS.items()))
def test_each_intake_decision_moves_a_new_message_to_its_status(
    decided: Status, kind: Kind
) -> None:
    """Intake stores a message in its decision's status; the event recording the decision
    must lead there from a new message, and carries the status's name."""
    assert status.apply(State(), kind) == State(decided)
    assert kind.value == decided.value and decided in FINAL
    assert status.DECISION_REASONS[decided]


@pytest.mark.parametrize("current", list(Status))
@pytest.mark.parametrize("had_attachments", [False, True])
def test_one_resend_rule(current: Status, had_attachments: bool) -> None:
    refusal = status.resend_refusal(current.value, had_attachments)
    if had_attachments:
        assert refusal is not None and "attachments" in refusal
    elif current in status.IN_FLIGHT:
        assert refusal is not None and f"still {current.value}" in refusal
        # "cancel it" only where the status machine lets a person cancel
        assert ("cancel it" in refusal) == (Status.CANCELLED in TRANSITIONS[current])
    else:
        assert refusal is None
