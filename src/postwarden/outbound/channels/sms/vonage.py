"""Vonage's SMS API: one form POST per text (``/sms/json``), the key and secret in the body.

``type=unicode`` for a UCS-2 text, ``client-ref`` our message id (every delivery receipt
carries it back), ``callback`` the delivery receipt URL, ``status-report-req=1``. The answer
lists one entry per part of the text, each with its own message id and status ("0" is
accepted); the verdict names every part's id, comma-separated, since receipts come per part.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import httpx

from postwarden.domain import clock, receipts
from postwarden.outbound.channels import base
from postwarden.outbound.channels.sms import provider

API = "/sms/json"


class VonageProvider:
    name: provider.Kind = "vonage"

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
        self.url = config.base_url + API
        self.timeout = timeout
        self._slots = asyncio.Semaphore(concurrency)

    async def submit(self, item: base.Outgoing[provider.SMS]) -> base.Verdict:
        form = {
            "api_key": self.config.user,
            "from": item.payload.sender.removeprefix("+"),
            "to": item.to.removeprefix("+"),
            "text": item.payload.text,
            "type": "unicode" if item.payload.encoded.encoding == "ucs2" else "text",
            "client-ref": str(item.message_id),
            "status-report-req": "1",
        }
        if self.callback_url:
            form["callback"] = self.callback_url
        shown = urlencode(form)  # before the secret goes in: the transcript never holds it
        form["api_secret"] = self.config.secret.get_secret_value()
        lines = [f"POST {self.url}", shown + "&api_secret=(hidden)"]
        started = clock.now()
        async with self._slots:
            try:
                response = await self.client.post(self.url, data=form, timeout=self.timeout)
            except httpx.HTTPError as exc:
                lines.append(f"no answer: {type(exc).__name__}: {exc}")
                return provider.refused(
                    item,
                    receipts.meaning("provider_error"),
                    code=None,
                    detail=f"Vonage could not be reached: {exc or type(exc).__name__}",
                    evidence=provider.evidence(self.name, self.config.remote, started, lines),
                )
        lines += ["", f"HTTP {response.status_code}", response.text]
        evidence = provider.evidence(self.name, self.config.remote, started, lines)
        try:
            parts = response.json().get("messages") or []
        except (ValueError, AttributeError):
            parts = []
        taken = [p for p in parts if str(p.get("status")) == "0" and p.get("message-id")]
        if response.status_code == 200 and taken:
            failed = len(parts) - len(taken)
            detail = f"accepted by Vonage, {len(parts)} part(s)"
            if failed:
                detail += f", {failed} refused: {parts[-1].get('error-text', '')}"
            return base.Verdict(
                item.message_id,
                "sent",
                detail=detail,
                reply_code=response.status_code,
                provider_message_id=",".join(str(p["message-id"]) for p in taken),
                evidence=evidence,
            )
        first = parts[0] if parts else {}
        code = str(first.get("status")) if first.get("status") is not None else None
        if code:
            meaning = receipts.explain("vonage", code)
        elif response.status_code in (401, 403):
            meaning = receipts.meaning("provider_account")
        else:
            meaning = receipts.meaning("provider_error")
        return provider.refused(
            item,
            meaning,
            code=code,
            reply_code=response.status_code,
            detail=str(first.get("error-text") or response.reason_phrase),
            evidence=evidence,
        )

    async def aclose(self) -> None:
        """The injected client belongs to the caller."""
