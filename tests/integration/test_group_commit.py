"""Single messages stored together (group commit): each request still gets its own outcome,
and a refused one stores nothing while the rest of its batch is stored."""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine, func, select

from postwarden import errors
from postwarden.intake import accept, schemas
from postwarden.store import accounts, suppression
from postwarden.store import tables as t
from postwarden.web.groupcommit import GroupCommit

LIMITS = accept.Limits(max_message_bytes=10_000, max_broadcast_recipients=100)


def message(**fields: object) -> schemas.MessageIn:
    return schemas.MessageIn.model_validate(
        {"from": "App <app@acme.test>", "to": "bob@example.test", "subject": "Hi", "text": "Hi"}
        | fields
    )


def test_a_mixed_batch_gets_one_outcome_each(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account, _ = account_key
    with engine.begin() as conn:
        other, _ = accounts.create(conn, "globex", "bounces.globex.test")
        suppression.suppress(
            conn, account.id, "gone@example.test", reason="userunknown", detail="", source="test"
        )
    items = [
        (account, message(to="ann@example.test", metadata={"order": 1})),
        (account, message(to="not an address")),
        (account, message(to="gone@example.test")),  # suppressed for acme
        (other, message(to="gone@example.test")),  # but not for globex
        (account, message(to="cy@example.test", idempotency_key="k1")),
        (account, message(to="cy@example.test", idempotency_key="k1")),  # the same request again
        (account, message(to="dee@example.test", text="x" * 20_000)),  # over the size limit
        (account, message(to="eve@example.test", category="billing")),
    ]
    with engine.begin() as conn:
        outcomes = accept.submit_many(conn, items, LIMITS)

    assert isinstance(outcomes[1], errors.InvalidInput)
    assert "not a valid email address" in outcomes[1].message
    assert isinstance(outcomes[6], errors.InvalidInput)
    assert "limit is 10000" in outcomes[6].message
    stored = [o for o in outcomes if isinstance(o, schemas.Accepted)]
    assert [o.status for o in stored] == [
        "pending",
        "dropped",
        "pending",
        "pending",
        "pending",
        "pending",
    ]
    assert stored[3].id == stored[4].id  # the idempotency key returned the first message
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                t.messages.c.id,
                t.messages.c.account_id,
                t.messages.c.to_addr,
                t.messages.c.status,
                t.messages.c.category,
                t.messages.c.metadata,
                t.contents.c.text,
            )
            .join(t.contents, t.contents.c.id == t.messages.c.content_id)
            .order_by(t.messages.c.id)
        ).all()
        contents = conn.scalar(select(func.count()).select_from(t.contents))
        dropped_events = conn.scalar(
            select(func.count()).where(
                t.events.c.kind == "dropped", t.events.c.reason == "suppressed"
            )
        )
    # the one with an idempotency key was stored alone, at once; the others together
    assert [(r.to_addr, r.status) for r in rows] == [
        ("cy@example.test", "pending"),
        ("ann@example.test", "pending"),
        ("gone@example.test", "dropped"),
        ("gone@example.test", "pending"),
        ("eve@example.test", "pending"),
    ]
    assert {r.id for r in rows} == {o.id for o in stored}
    assert [r.account_id for r in rows][2:4] == [account.id, other.id]
    assert rows[1].metadata == {"order": 1} and rows[4].category == "billing"
    assert contents == 5 and all(r.text == "Hi" for r in rows)  # none for the refused ones
    assert dropped_events == 1


async def test_concurrent_submissions_each_get_their_own_result(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account, _ = account_key
    batches: list[int] = []

    def write(
        items: list[tuple[accounts.Account, schemas.MessageIn]],
    ) -> list[schemas.Accepted | Exception]:
        batches.append(len(items))
        with engine.begin() as conn:
            return list(accept.submit_many(conn, items, LIMITS))

    writer: GroupCommit[tuple[accounts.Account, schemas.MessageIn], schemas.Accepted] = GroupCommit(
        write
    )
    addresses = [f"user{i}@example.test" if i % 7 else f"bad{i}" for i in range(200)]
    results = await asyncio.gather(
        *(writer.submit((account, message(to=a))) for a in addresses), return_exceptions=True
    )
    for address, result in zip(addresses, results, strict=True):
        if address.startswith("bad"):
            assert isinstance(result, errors.InvalidInput)
        else:
            assert isinstance(result, schemas.Accepted) and result.status == "pending"
    with engine.connect() as conn:
        stored = dict(conn.execute(select(t.messages.c.id, t.messages.c.to_addr)).all())
    accepted = {r.id: a for a, r in zip(addresses, results, strict=True) if not a.startswith("bad")}
    assert stored == accepted
    assert len(batches) < len(addresses)  # they were grouped


async def test_a_batch_that_fails_is_written_again_one_by_one() -> None:
    calls: list[list[int]] = []

    def write(items: list[int]) -> list[int | Exception]:
        calls.append(items)
        if len(items) > 1 and 13 in items:
            raise RuntimeError("the database said no")  # e.g. a unique constraint
        if items == [13]:
            raise RuntimeError("13 alone")
        return [i * 2 for i in items]

    writer: GroupCommit[int, int] = GroupCommit(write)
    results = await asyncio.gather(*(writer.submit(i) for i in range(20)), return_exceptions=True)
    assert [r for i, r in enumerate(results) if i != 13] == [i * 2 for i in range(20) if i != 13]
    assert isinstance(results[13], RuntimeError) and str(results[13]) == "13 alone"
