"""Intake: validate what the API or SMTP submission hands over, decide, and store it in one go.

Every intake decision (duplicate, no_channel, dropped, blocked, failed) becomes the message's
status at once, with its event (:mod:`postwarden.store.messages` stores both); only
``pending`` messages reach the dispatcher. A refused request stores nothing: validation
happens before the first write, and all writes share one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from postwarden import errors
from postwarden.domain import addresses, status
from postwarden.domain.status import Status
from postwarden.intake import channels, schemas
from postwarden.settings import Settings
from postwarden.store import contacts, messages
from postwarden.store.accounts import Account
from postwarden.store.suppression import Screen

if TYPE_CHECKING:
    from sqlalchemy import Connection


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int
    max_broadcast_recipients: int
    unsubscribe_exempt: frozenset[str] = frozenset()
    """Categories an unsubscribe never drops (transactional mail)."""
    channels: tuple[str, ...] = (channels.EMAIL,)
    """The channels this Postwarden sends on, the default first (see :mod:`.channels`)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            settings.max_message_bytes, settings.max_broadcast_recipients, settings.transactional
        )


def _content(
    account: Account, body: schemas.ContentIn, limits: Limits, extra_bytes: int = 0
) -> messages.NewContent:
    """The content of ``body``, once its sender and size are checked."""
    name, sender = addresses.check_mailbox(body.from_)
    size = len(body.text or "") + len(body.html or "") + extra_bytes
    if size > limits.max_message_bytes:
        raise errors.InvalidInput(
            f"the message is {size} bytes; the limit is {limits.max_message_bytes}"
        )
    return messages.NewContent(
        account.id, sender, name, body.subject, body.text, body.html, body.headers
    )


def submit_message(
    conn: Connection,
    account: Account,
    body: schemas.MessageIn,
    limits: Limits,
    *,
    resend_of: int | None = None,
) -> schemas.Accepted:
    """Store one message; an idempotency key that was seen before returns the first message."""
    if body.idempotency_key:
        found = messages.by_idempotency_key(conn, account.id, body.idempotency_key)
        if found:
            return schemas.Accepted(id=found[0], status=found[1])
    channel = channels.requested(body.channel, limits.channels) or limits.channels[0]
    to = addresses.check(body.to)
    files = [messages.NewAttachment(a.filename, a.content_type, a.data()) for a in body.attachments]
    content = _content(account, body, limits, sum(len(f.data) for f in files))
    content_id = messages.add_content(conn, content)
    decision = Screen(conn, account.id, [to], limits.unsubscribe_exempt).decide(to, body.category)
    new = messages.NewMessage(
        account.id,
        content_id,
        channel,
        to,
        body.category,
        decision,
        metadata=body.metadata,
        idempotency_key=body.idempotency_key,
        has_attachments=bool(files),
        resend_of=resend_of,
        track=body.track,
    )
    if body.idempotency_key is None:  # nothing unique to collide on: no savepoint needed
        (message_id,) = messages.add(conn, [new])
    else:
        message_id = messages.add_keyed(conn, new)
    if files:
        messages.add_attachments(conn, message_id, files)
    return schemas.Accepted(id=message_id, status=new.status.value)


def submit_many(
    conn: Connection, items: Sequence[tuple[Account, schemas.MessageIn]], limits: Limits
) -> list[schemas.Accepted | errors.PostwardenError]:
    """What :func:`submit_message` does for each item, with one statement per table for all of
    them (the API's group commit). A refused item gets its error and stores nothing; an item
    with an idempotency key or attachments is stored alone, under a savepoint."""
    outcomes: list[schemas.Accepted | errors.PostwardenError | None] = [None] * len(items)
    checked: list[tuple[int, Account, schemas.MessageIn, str, str, messages.NewContent]] = []
    for i, (account, body) in enumerate(items):
        try:
            if body.idempotency_key is not None or body.attachments:
                with conn.begin_nested():
                    outcomes[i] = submit_message(conn, account, body, limits)
            else:
                channel = channels.requested(body.channel, limits.channels) or limits.channels[0]
                to = addresses.check(body.to)
                checked.append((i, account, body, channel, to, _content(account, body, limits)))
        except errors.PostwardenError as exc:
            outcomes[i] = exc
    if checked:
        content_ids = messages.add_contents(conn, [c[5] for c in checked])
        wanted: dict[int, list[str]] = {}
        for _, account, _, _, to, _ in checked:
            wanted.setdefault(account.id, []).append(to)
        screens = {
            account_id: Screen(conn, account_id, candidates, limits.unsubscribe_exempt)
            for account_id, candidates in wanted.items()
        }
        new = [
            messages.NewMessage(
                account.id,
                content_id,
                channel,
                to,
                body.category,
                screens[account.id].decide(to, body.category),
                metadata=body.metadata,
                track=body.track,
            )
            for (_, account, body, channel, to, _), content_id in zip(
                checked, content_ids, strict=True
            )
        ]
        ids = messages.add(conn, new)
        for (i, *_), message_id, stored in zip(checked, ids, new, strict=True):
            outcomes[i] = schemas.Accepted(id=message_id, status=stored.status.value)
    return outcomes  # type: ignore[return-value]  # every item has its outcome by now


# (address, contact id, channel, decided status or None, detail)
_Planned = tuple[str, int | None, str, str | None, str | None]


def _plan(
    conn: Connection, account: Account, body: schemas.BroadcastIn, limits: Limits
) -> list[_Planned]:
    """Each recipient's address and channel, and the decisions taken from the request alone
    (no address, not opted in, not a valid address); InvalidInput for contact ids that are
    not the account's."""
    recipients = body.recipients
    if len(recipients) > limits.max_broadcast_recipients:
        raise errors.InvalidInput(
            f"{len(recipients)} recipients; the limit is {limits.max_broadcast_recipients}"
        )
    requested = channels.requested(body.channel, limits.channels)
    default = requested or limits.channels[0]
    contact_ids = sorted({cid for r in recipients if (cid := r.get("contact_id")) is not None})
    known = contacts.of_account(conn, account.id, contact_ids)
    unknown = [cid for cid in contact_ids if cid not in known]
    if unknown:
        shown = ", ".join(map(str, unknown[:10]))
        raise errors.InvalidInput(
            f"unknown contact ids: {shown}" + (" ..." if len(unknown) > 10 else "")
        )
    category = body.category
    failed = Status.FAILED.value
    no_channel = Status.NO_CHANNEL.value
    planned: list[_Planned] = []
    plan = planned.append
    check = addresses.check
    plain = addresses.plain
    for recipient in recipients:
        contact_id = recipient.get("contact_id")
        if contact_id is None:
            raw = recipient.get("email") or ""
            if (address := plain(raw)) is not None:
                plan((address, None, default, None, None))  # the common case: a plain address
                continue
            channel = default
            if not raw:
                plan(("", None, channel, no_channel, "no address was given"))
                continue
        else:
            contact = known[contact_id]
            channel, why_not = channels.for_contact(contact, category, requested, limits.channels)
            raw = contact.address(channel) or ""
            if why_not is not None:
                plan(
                    (
                        addresses.normalize(raw) if raw else "",
                        contact_id,
                        channel,
                        no_channel,
                        why_not,
                    )
                )
                continue
        try:
            plan((check(raw), contact_id, channel, None, None))
        except errors.InvalidInput as exc:
            plan((raw.strip()[:320], contact_id, channel, failed, exc.message))
    return planned


def submit_broadcast(
    conn: Connection, account: Account, body: schemas.BroadcastIn, limits: Limits
) -> schemas.BroadcastAccepted:
    """Store one content for many recipients, taking every intake decision in bulk."""
    planned = _plan(conn, account, body, limits)
    content_id = messages.add_content(conn, _content(account, body, limits))
    screen = Screen(
        conn,
        account.id,
        [a for a, _, _, d, _ in planned if d is None],
        limits.unsubscribe_exempt,
    )
    seen: set[str] = set()
    add_seen = seen.add
    decide = screen.decide
    duplicate = Status.DUPLICATE.value
    pending = Status.PENDING.value
    category = body.category
    rows: list[messages.Recipient] = []
    row = rows.append
    for address, contact_id, channel, state, detail in planned:
        if state is None:
            if address in seen:
                state, detail = duplicate, f"{address} appears earlier in this broadcast"
            else:
                add_seen(address)
                decision = decide(address, category)
                if decision is None:
                    state = pending
                else:
                    state, detail = decision[0].value, decision[1]
        row((address, channel, state, contact_id, detail))
    counts: dict[str, int] = {}
    for _, _, state, _, _ in rows:
        counts[state] = counts.get(state, 0) + 1
    broadcast_id = messages.add_broadcast(
        conn,
        account_id=account.id,
        content_id=content_id,
        category=category,
        track=body.track,
        recipients=rows,
    )
    return schemas.BroadcastAccepted(id=broadcast_id, counts=counts)


def resend(conn: Connection, account: Account, message_id: int, to: str | None) -> schemas.Accepted:
    """A new message with the same content, to the same or a corrected address, linked to the
    original; Conflict (409) where :func:`status.resend_refusal` says why it cannot be."""
    original = messages.to_resend(conn, account.id, message_id)
    refusal = status.resend_refusal(original.status, original.has_attachments)
    if refusal is not None:
        raise errors.Conflict(refusal)
    address = addresses.check(to) if to else original.to_addr
    if not address:
        raise errors.InvalidInput('the original has no address: give one in "to"')
    decision = Screen(conn, account.id, [address]).decide(address, original.category)
    new = messages.NewMessage(
        account.id,
        original.content_id,
        original.channel,
        address,
        original.category,
        decision,
        metadata=original.metadata,
        resend_of=original.id,
        contact_id=original.contact_id,
        broadcast_id=original.broadcast_id,
        track=original.track,
    )
    (new_id,) = messages.add(conn, [new])
    return schemas.Accepted(id=new_id, status=new.status.value)
