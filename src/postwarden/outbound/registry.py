"""The channels the dispatcher serves, keyed by ``messages.channel`` (like httpx's mounts: a
plain dict built from the settings, no plugin system)."""

from __future__ import annotations

from postwarden.outbound.channels import base
from postwarden.outbound.channels.email import channel as email
from postwarden.settings import Settings


def channels(settings: Settings, secret: bytes) -> dict[str, base.Channel]:
    """Every channel the settings configure; email always (direct to MX needs nothing)."""
    found: list[base.Channel] = [email.EmailChannel(settings, secret)]
    # SMS: append its channel here when the settings name a provider.
    return {channel.name: channel for channel in found}
