"""Twilio's Programmable Messaging REST API: one form POST per text, basic auth.

``POST /2010-04-01/Accounts/{SID}/Messages.json`` with ``To``, ``From`` (or
``MessagingServiceSid`` for a sender starting "MG"), ``Body`` and ``StatusCallback``; a 201
names the message (``SM…``) and its status (queued, or accepted through a messaging
service): the provider took it, so the verdict is ``sent`` and the callbacks tell the rest.
An error answer carries Twilio's error code, which the error table classifies.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import httpx

from postwarden.domain import clock, receipts
from postwarden.outbound.channels import base
from postwarden.outbound.channels.sms import provider

API = "/2010-04-01/Accounts/{sid}/Messages.json"


class TwilioProvider:
    name: provider.Kind = "twilio"

    def __init__(
        self,
        config: provider.Config,
        client: httpx.AsyncClient,
        *,
        callback_url: str | None,
        concurrency: int = 8,
        timeout: float = 30.0,
    ) -> None:
        self.config = config
        self.client = client
        self.callback_url = callback_url
        self.default_sender = config.sender
        self.url = config.base_url + API.format(sid=config.user)
        self.timeout = timeout
        self._slots = asyncio.Semaphore(concurrency)

    async def submit(self, item: base.Outgoing[provider.SMS]) -> base.Verdict:
        sender = item.payload.sender
        form = {"To": item.to, "Body": item.payload.text}
        form["MessagingServiceSid" if sender.startswith("MG") else "From"] = sender
        started = clock.now()
        if self.callback_url:
            form["StatusCallback"] = receipts.callback_url(
                self.callback_url, item.message_id, started
            )
        lines = [f"POST {self.url}", urlencode(form)]
        async with self._slots:
            try:
                response = await self.client.post(
                    self.url,
                    data=form,
                    auth=(self.config.user, self.config.secret.get_secret_value()),
                    timeout=self.timeout,
                )
            except httpx.HTTPError as exc:
                lines.append(f"no answer: {type(exc).__name__}: {exc}")
                return provider.refused(
                    item,
                    receipts.meaning("provider_error"),
                    code=None,
                    detail=f"Twilio could not be reached: {exc or type(exc).__name__}",
                    evidence=provider.evidence(self.name, self.config.remote, started, lines),
                )
        lines += ["", f"HTTP {response.status_code}", response.text]
        evidence = provider.evidence(self.name, self.config.remote, started, lines)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code in (200, 201) and body.get("sid"):
            status = body.get("status") or "queued"
            segments = body.get("num_segments")
            detail = f"{status} at Twilio" + (f", {segments} segment(s)" if segments else "")
            return base.Verdict(
                item.message_id,
                "sent",
                detail=detail,
                reply_code=response.status_code,
                provider_message_id=str(body["sid"]),
                evidence=evidence,
            )
        code = str(body["code"]) if body.get("code") else None
        if code:
            meaning = receipts.explain("twilio", code)
        elif response.status_code == 429:
            meaning = receipts.meaning("rate_limited")
        elif response.status_code in (401, 403):
            meaning = receipts.meaning("provider_account")
        else:
            meaning = receipts.meaning(
                "provider_error" if response.status_code >= 500 else "invalid_request"
            )
        retry = response.headers.get("Retry-After", "")
        return provider.refused(
            item,
            meaning,
            code=code,
            reply_code=response.status_code,
            detail=str(body.get("message") or response.reason_phrase or response.status_code),
            retry_after=float(retry) if retry.isdigit() else None,
            evidence=evidence,
        )

    async def aclose(self) -> None:
        """The injected client belongs to the caller."""
