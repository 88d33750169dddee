"""The SMS channel: the channel contract (outbound.channels.base) over one provider.

``build`` reads each message's text and sender (store.sms), normalises the number and checks
the text against the segment limit; a message that cannot be sent gets a ``failed`` verdict
of its own. ``send`` hands every text to the provider at once (the provider bounds how many
are in flight) and returns the providers' verdicts, already classified.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
from sqlalchemy import Connection

from postwarden import errors
from postwarden.domain import phones, sms
from postwarden.outbound.channels import base
from postwarden.outbound.channels.sms import provider, smpp, twilio, vonage
from postwarden.settings import Settings
from postwarden.store import sms as sms_store
from postwarden.store.queue import Claimed

SENDER_ID_MAX = 11
"""Alphanumeric sender ids: at most 11 characters (GSM 03.40's address field)."""


def sender_problem(sender: str) -> str | None:
    """Why ``sender`` cannot be a sender (None when it can): an E.164 number, a short code of
    digits, or an alphanumeric id of 1 to 11 letters, digits and spaces."""
    if not sender:
        return "No sender is configured (POSTWARDEN_SMS_PROVIDER ?from=, or the content's from)."
    if sender.startswith("+"):
        return (
            None
            if sender[1:].isdigit() and 8 <= len(sender) <= 16
            else (f"The sender {sender!r} is not an E.164 number.")
        )
    if sender.isdigit():
        return None if len(sender) <= 15 else f"The sender {sender!r} is too long."
    if len(sender) > SENDER_ID_MAX or not sender.replace(" ", "").isalnum() or not sender.isascii():
        return f"The sender id {sender!r} must be 1 to 11 ASCII letters, digits or spaces."
    return None


class SMSChannel:
    name = "sms"
    source = "sms"  # the events its attempts record

    def __init__(
        self,
        provider: provider.Provider,
        *,
        region: str = "US",
        mobile_only: bool = True,
        max_segments: int = 10,
    ) -> None:
        self.provider = provider
        self.region = region
        self.mobile_only = mobile_only
        self.max_segments = max_segments

    def build(
        self, conn: Connection, claimed: Sequence[Claimed]
    ) -> list[base.Outgoing | base.Verdict]:
        texts = sms_store.texts(conn, {c.content_id for c in claimed})
        return [self._build_one(c, texts.get(c.content_id)) for c in claimed]

    def _build_one(self, c: Claimed, text: sms_store.Text | None) -> base.Outgoing | base.Verdict:
        number = phones.check(c.to_addr, region=self.region, mobile=self.mobile_only)
        if number.e164 is None:
            reason = "notaccept" if number.not_mobile else "userunknown"
            return base.Verdict(c.id, "failed", reason, None, detail=number.reason or "")
        if text is None:
            return base.Verdict(
                c.id, "failed", "contenterror", None, detail="The message has no text."
            )
        problem = sms.too_long(text.text, self.max_segments)
        if problem:
            return base.Verdict(c.id, "failed", "contenterror", None, detail=problem)
        sender = text.sender or self.provider.default_sender
        problem = sender_problem(sender)
        if problem:
            return base.Verdict(c.id, "failed", "rejected", None, detail=problem)
        payload = provider.SMS(text.text, sender, sms.encode(text.text))
        return base.Outgoing(c.id, number.e164, payload)

    async def send(self, batch: Sequence[base.Outgoing]) -> list[base.Verdict]:
        return list(await asyncio.gather(*(self.provider.submit(item) for item in batch)))

    async def aclose(self) -> None:
        await self.provider.aclose()


def open_channel(
    settings: Settings,
    *,
    client: httpx.AsyncClient | None = None,
    on_event: smpp.OnEvent | None = None,
) -> SMSChannel:
    """The SMS channel the settings describe. ``client`` serves the HTTP providers (the caller
    owns it); ``on_event`` receives the receipts and replies an SMPP session brings."""
    if settings.sms.provider is None:
        raise errors.ConfigError("POSTWARDEN_SMS_PROVIDER is not set")
    config = provider.parse_url(settings.sms.provider.get_secret_value())
    chosen: provider.Provider
    if config.kind == "smpp":
        chosen = smpp.SMPPProvider(
            config, window=settings.sms.window, on_event=on_event, timeout=settings.sms.timeout
        )
    else:
        if client is None:
            raise errors.ConfigError(f"the {config.kind} SMS provider needs an HTTP client")
        base_url = settings.sms.callback_url.rstrip("/")
        cls = twilio.TwilioProvider if config.kind == "twilio" else vonage.VonageProvider
        chosen = cls(
            config,
            client,
            callback_url=f"{base_url}/{config.kind}",
            concurrency=settings.sms.concurrency,
            timeout=settings.sms.timeout,
        )
    return SMSChannel(
        chosen,
        region=settings.sms.default_region,
        mobile_only=settings.sms.mobile_only,
        max_segments=settings.sms.max_segments,
    )
