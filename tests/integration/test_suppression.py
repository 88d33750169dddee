"""Suppression policy through the recorder: what adds an address, what does not, re-adding."""

from __future__ import annotations

from sqlalchemy import Engine, select

from postwarden.domain.status import Kind
from postwarden.intake import accept, schemas
from postwarden.store import accounts, recorder, suppression
from postwarden.store import tables as t

POLICY = suppression.Policy(soft_bounce_limit=3, soft_bounce_days=30)


def send(engine: Engine, account: accounts.Account, to: str, category: str = "") -> int:
    body = schemas.MessageIn.model_validate(
        {"from": "app@acme.test", "to": to, "subject": "s", "text": "t", "category": category}
    )
    with engine.begin() as conn:
        return accept.submit_message(conn, account, body, accept.Limits(10**7, 10**5)).id


def bounce(engine: Engine, message_id: int, reason: str, hard: bool) -> None:
    with engine.begin() as conn:
        recorder.record(
            conn,
            [
                recorder.Fact(message_id, Kind.ATTEMPT, "test"),
                recorder.Fact(
                    message_id,
                    Kind.BOUNCED,
                    "test",
                    reason=reason,
                    hard=hard,
                    detail=f"550 {reason}",
                ),
            ],
            policy=POLICY,
        )


def entries(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.suppressions.c.address, t.suppressions.c.category, t.suppressions.c.reason)
        )
        return sorted(tuple(r) for r in rows)  # type: ignore[misc]


def test_soft_bounces_escalate_but_sender_side_blocks_do_not(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    for _ in range(3):
        bounce(engine, send(engine, account, "spamblocked@example.test"), "spamdetected", False)
    for _ in range(2):
        bounce(engine, send(engine, account, "full@example.test"), "mailboxfull", False)
    assert entries(engine) == []
    bounce(engine, send(engine, account, "full@example.test"), "mailboxfull", False)
    assert entries(engine) == [("full@example.test", "", "soft_bounces")]
    assert send(engine, account, "full@example.test") and _status_of_last(engine) == "dropped"


def _status_of_last(engine: Engine) -> str:
    with engine.connect() as conn:
        return conn.scalar(select(t.messages.c.status).order_by(t.messages.c.id.desc()).limit(1))


def test_marked_valid_then_fails_again_is_re_added(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    bounce(engine, send(engine, account, "gone@example.test"), "userunknown", True)
    assert entries(engine) == [("gone@example.test", "", "userunknown")]
    dropped = send(engine, account, "gone@example.test")
    with engine.begin() as conn:
        suppression.remove(conn, account.id, "gone@example.test", actor="ops@acme.test")
        assert suppression.dropped_since_removal(conn, account.id, "gone@example.test") == [dropped]
    retry = send(engine, account, "gone@example.test")
    assert _status_of_last(engine) == "pending"
    bounce(engine, retry, "userunknown", True)
    assert entries(engine) == [("gone@example.test", "", "userunknown")]
    with engine.connect() as conn:
        audit = list(
            conn.execute(
                select(t.audit_log.c.actor, t.audit_log.c.action).order_by(t.audit_log.c.id)
            )
        )
    assert [tuple(a) for a in audit] == [
        ("postwarden", "suppression.add"),
        ("ops@acme.test", "suppression.remove"),
        ("postwarden", "suppression.add"),
    ]


def test_unsubscribe_suppresses_one_category(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    message_id = send(engine, account, "reader@example.test", category="news")
    with engine.begin() as conn:
        recorder.record(
            conn,
            [
                recorder.Fact(message_id, Kind.ATTEMPT, "test"),
                recorder.Fact(message_id, Kind.DELIVERED, "test"),
                recorder.Fact(message_id, Kind.UNSUBSCRIBED, "test"),
            ],
            policy=POLICY,
        )
    assert entries(engine) == [("reader@example.test", "news", "unsubscribe")]
    send(engine, account, "reader@example.test", category="news")
    assert _status_of_last(engine) == "dropped"
    send(engine, account, "reader@example.test", category="billing")
    assert _status_of_last(engine) == "pending"


def test_unsubscribe_from_uncategorised_mail_spares_transactional(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    message_id = send(engine, account, "reader@example.test")
    with engine.begin() as conn:
        recorder.record(conn, [recorder.Fact(message_id, Kind.UNSUBSCRIBED, "test")], policy=POLICY)
    limits = accept.Limits(10**7, 10**5, frozenset({"security"}))
    with engine.begin() as conn:
        for category, expected in (("security", "pending"), ("news", "dropped")):
            body = schemas.MessageIn.model_validate(
                {
                    "from": "app@acme.test",
                    "to": "reader@example.test",
                    "subject": "s",
                    "text": "t",
                    "category": category,
                }
            )
            assert accept.submit_message(conn, account, body, limits).status == expected


def test_adding_twice_is_one_entry_and_one_audit_row(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    with engine.begin() as conn:
        first = suppression.suppress(
            conn, account.id, "x@example.test", reason="manual", source="test"
        )
        again = suppression.suppress(
            conn, account.id, "x@example.test", reason="manual", source="test"
        )
        blocked = suppression.block(conn, account.id, "@spam.test", actor="test")
        blocked_again = suppression.block(conn, account.id, "@spam.test", actor="test")
        actions = list(conn.scalars(select(t.audit_log.c.action).order_by(t.audit_log.c.id)))
    assert (first, again, blocked, blocked_again) == (True, False, True, False)
    assert actions == ["suppression.add", "block.add"]
