"""The generic dispatcher with channels that reach nobody (``testing.fakes.FakeChannel``), on
both databases: claims per channel, verdicts -> facts, attempts, kept bodies, provider ids."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, select, update

from postwarden.domain import clock
from postwarden.intake import accept, schemas
from postwarden.outbound.dispatcher import Dispatcher
from postwarden.settings import Settings
from postwarden.store import accounts, queries, queue
from postwarden.store import tables as t
from postwarden.testing.fakes import FakeChannel

LIMITS = accept.Limits(10_000_000, 200_000)


def submit(engine: Engine, account: accounts.Account, to: str, channel: str = "email") -> int:
    """A message to ``to`` on ``channel``: intake only makes email yet, so another channel's row
    is an email's moved by hand."""
    email = to if channel == "email" else f"moved-{to.lstrip('+')}@x.test"
    body = schemas.MessageIn.model_validate(
        {"from": "shop@acme.test", "to": email, "subject": "Hi", "text": "Hello"}
    )
    with engine.begin() as conn:
        message_id = accept.submit_message(conn, account, body, LIMITS).id
        if channel != "email":
            conn.execute(
                update(t.messages)
                .where(t.messages.c.id == message_id)
                .values(channel=channel, to_addr=to)
            )
    return message_id


def detail(engine: Engine, account: accounts.Account, message_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        return queries.message_detail(conn, account.id, message_id)


def column(engine: Engine, name: str, message_id: int) -> Any:
    with engine.connect() as conn:
        return conn.scalar(select(t.messages.c[name]).where(t.messages.c.id == message_id))


async def test_each_channel_is_handed_only_its_own_messages(
    settings: Settings, engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    mail = [submit(engine, account, f"m{i}@x.test") for i in range(3)]
    texts = [submit(engine, account, f"+4479460000{i:02d}", channel="sms") for i in range(2)]
    email, sms = FakeChannel("email"), FakeChannel("sms")
    dispatcher = Dispatcher(engine, settings, {"email": email, "sms": sms})
    assert await dispatcher.run_once() == 5
    assert sorted(email.built) == mail and sorted(o.message_id for o in email.sent) == mail
    assert sorted(sms.built) == texts and sorted(o.message_id for o in sms.sent) == texts
    for message_id in mail + texts:
        assert detail(engine, account, message_id)["status"] == "delivered"
    await dispatcher.aclose()
    assert email.closed and sms.closed


async def test_an_sms_row_is_never_handed_to_the_email_channel(
    settings: Settings, engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    text = submit(engine, account, "+447946000001", channel="sms")
    mail = submit(engine, account, "bob@x.test")
    email = FakeChannel("email")
    dispatcher = Dispatcher(engine, settings, {"email": email})
    for _ in range(3):
        await dispatcher.run_once()
    assert email.built == [mail]
    item = detail(engine, account, text)
    assert (item["status"], item["attempts"], column(engine, "attempts", text)) == (
        "pending",
        [],
        0,
    )
    with engine.begin() as conn:
        again = queue.claim_batch(
            conn, channel="email", owner="x", limit=10, lease=timedelta(seconds=5), now=clock.now()
        )
    assert again == []


async def test_verdicts_become_facts_attempts_and_kept_bodies(
    settings: Settings, engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    ids = {
        to: submit(engine, account, to)
        for to in [
            "delivered@x.test",
            "sent@x.test",
            "deferred@x.test",
            "deferred2@x.test",
            "bounced@x.test",
            "soft@x.test",
            "failed@x.test",
            "unbuildable@x.test",
        ]
    }
    fake = FakeChannel("email", source="smtp", via="mx")
    dispatcher = Dispatcher(engine, settings, {"email": fake})
    started = clock.now()
    assert await dispatcher.run_once() == len(ids)
    assert sorted(fake.built) == sorted(ids.values())
    assert ids["unbuildable@x.test"] not in [o.message_id for o in fake.sent]

    def outcome(to: str) -> tuple[str, str | None]:
        item = detail(engine, account, ids[to])
        return item["status"], item["reason"]

    assert outcome("delivered@x.test") == ("delivered", None)
    assert outcome("sent@x.test") == ("sent", None)
    assert outcome("deferred@x.test") == ("deferred", "networkerror")
    assert outcome("bounced@x.test") == ("bounced", "userunknown")
    assert outcome("soft@x.test") == ("bounced", "mailboxfull")
    assert outcome("failed@x.test") == ("failed", "contenterror")
    assert outcome("unbuildable@x.test") == ("failed", "contenterror")

    # The provider's id, kept per channel for later receipts.
    assert column(engine, "provider_message_id", ids["sent@x.test"]) == f"fake-{ids['sent@x.test']}"
    assert column(engine, "provider_message_id", ids["delivered@x.test"]) is None
    # Every lease is released; only deferred messages are due again, after their backoff or
    # the wait the remote side asked for.
    for to, message_id in ids.items():
        assert column(engine, "lease_owner", message_id) is None, to
        due = column(engine, "next_attempt_at", message_id)
        assert (due is not None) == to.startswith("deferred"), to
    plain = column(engine, "next_attempt_at", ids["deferred@x.test"])
    asked = column(engine, "next_attempt_at", ids["deferred2@x.test"])
    assert (
        started + timedelta(seconds=settings.min_backoff) <= plain < started + timedelta(seconds=1)
    )
    assert asked >= started + timedelta(seconds=2), "the wait asked for is honoured"
    # The events carry the channel's source and words; the attempts their evidence.
    bounced = detail(engine, account, ids["bounced@x.test"])
    (event,) = [e for e in bounced["events"] if e["kind"] == "bounced"]
    assert (event["source"], event["code"], event["detail"]) == (
        "smtp",
        "5.1.1",
        "550 5.1.1 no such user",
    )
    (attempt,) = bounced["attempts"]
    assert (attempt["via"], attempt["outcome"], attempt["code"], attempt["enhanced"]) == (
        "mx",
        "bounced",
        550,
        "5.1.1",
    )
    assert attempt["transcript"] == "email -> bounced@x.test"
    assert bounced["suppression"]["reason"] == "userunknown", "a hard bounce suppresses"
    assert detail(engine, account, ids["soft@x.test"])["suppression"] is None
    unbuilt = detail(engine, account, ids["unbuildable@x.test"])
    assert unbuilt["attempts"] == [], "nothing was attempted"
    assert [e["detail"] for e in unbuilt["events"] if e["kind"] == "failed"] == ["cannot build"]
    # The bytes of the deferred messages are kept for their retry, and only theirs.
    with engine.connect() as conn:
        kept = dict(conn.execute(select(t.bodies.c.message_id, t.bodies.c.raw)).all())
    deferred = [ids["deferred@x.test"], ids["deferred2@x.test"]]
    assert kept == {mid: f"kept {mid}".encode() for mid in deferred}


async def test_a_deferred_message_expires_once_retries_run_out(
    settings: Settings, engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    message_id = submit(engine, account, "deferred@x.test")
    configured = settings.model_copy(update={"max_lifetime": 0.5, "min_backoff": 0.2})
    dispatcher = Dispatcher(engine, configured, {"email": FakeChannel("email")})
    assert await dispatcher.run_once() == 1
    assert detail(engine, account, message_id)["reason"] == "networkerror"
    with engine.begin() as conn:  # the retry is due, and the message is older than its lifetime
        conn.execute(
            update(t.messages)
            .where(t.messages.c.id == message_id)
            .values(next_attempt_at=clock.now(), created_at=clock.now() - timedelta(seconds=1))
        )
    assert await dispatcher.run_once() == 1
    item = detail(engine, account, message_id)
    assert (item["status"], item["reason"]) == ("bounced", "expired")
    assert [e["kind"] for e in item["events"]][-2:] == ["deferred", "expired"]
    assert item["events"][-1]["detail"] == "timed out", "the last attempt's words stay"
    assert column(engine, "next_attempt_at", message_id) is None


async def test_run_stops_and_gives_back_nothing_it_did_not_send(
    settings: Settings, engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    """The pipelined loop, with two lanes: everything due is sent once and recorded."""
    account = account_key[0]
    mail = [submit(engine, account, f"m{i}@x.test") for i in range(7)]
    texts = [submit(engine, account, f"+4479460001{i:02d}", channel="sms") for i in range(4)]
    email, sms = FakeChannel("email"), FakeChannel("sms")
    configured = settings.model_copy(update={"batch_size": 3})
    dispatcher = Dispatcher(engine, configured, {"email": email, "sms": sms})
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    for _ in range(100):
        await asyncio.sleep(0.05)
        statuses = {detail(engine, account, m)["status"] for m in mail + texts}
        if statuses == {"delivered"}:
            break
    stop.set()
    await task
    assert statuses == {"delivered"}
    assert sorted(o.message_id for o in email.sent) == mail
    assert sorted(o.message_id for o in sms.sent) == texts
