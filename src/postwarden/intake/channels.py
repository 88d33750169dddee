"""Which channel a message goes out on: the one the request names, or the one the contact
chose for the message's category, among the channels this Postwarden has configured.

The seam for new channels: a channel is configured when :class:`accept.Limits` lists it
(only email today), and a contact's address on it is :meth:`contacts.Contact.address`.
"""

from __future__ import annotations

from collections.abc import Sequence

from postwarden import errors
from postwarden.store import contacts

EMAIL = "email"
KNOWN = ("email", "sms")
_NAMES = {"email": "email", "sms": "SMS"}
_ADDRESS = {"email": "email address", "sms": "phone number"}


def requested(channel: str | None, configured: Sequence[str]) -> str | None:
    """The channel a request names, once it is configured (None when it names none);
    InvalidInput otherwise, saying which channels are."""
    if channel is None or channel in configured:
        return channel
    offered = " and ".join(_NAMES.get(c, c) for c in configured)
    if channel in KNOWN:
        raise errors.InvalidInput(
            f"channel {channel!r}: {_NAMES[channel]} is not configured on this Postwarden; "
            f"it sends {offered}"
        )
    raise errors.InvalidInput(f"unknown channel {channel!r}; this Postwarden sends {offered}")


def for_contact(
    contact: contacts.Contact, category: str, channel: str | None, configured: Sequence[str]
) -> tuple[str, str | None]:
    """(channel, None) to send to the contact on; (channel, why not) when there is none,
    which names the channel that was missing and why (a ``no_channel`` decision).

    ``channel`` is the request's (see :func:`requested`); without one, the first of the
    contact's chosen channels for the category that is configured and has an address."""
    chosen = contact.preferences.get(category, contact.preferences.get("*"))
    if channel is not None:
        if not contact.address(channel):
            return channel, f"the contact has no {_ADDRESS[channel]}"
        if chosen is not None and channel not in chosen:
            return channel, f"the contact did not opt in to {_NAMES[channel]} for {category!r}"
        return channel, None
    wanted = list(configured) if chosen is None else [c for c in chosen if c in configured]
    if not wanted:
        if not chosen:
            return configured[0], f"the contact opted out of every channel for {category!r}"
        names = " and ".join(_NAMES.get(c, c) for c in chosen)
        return (
            configured[0],
            f"the contact opted in only to {names} for {category!r}, "
            "which this Postwarden does not send",
        )
    for candidate in wanted:
        if contact.address(candidate):
            return candidate, None
    return wanted[0], f"the contact has no {_ADDRESS[wanted[0]]}"
