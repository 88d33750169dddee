"""A Vonage-compatible SMS API on loopback (``POST /sms/json``), answering like Vonage for the
test handsets: one entry per part of the text, each with its own message id, and one
delivery receipt per part posted to the request's ``callback`` (form-encoded, with
``client-ref``), signed with ``sig``/``timestamp``/``nonce`` when a signature secret is set.
A STOP handset then sends an inbound "STOP" to ``inbound_url``."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from postwarden.domain import receipts, sms
from postwarden.testing import handsets
from postwarden.testing.http import Loopback

# fate -> (DLR status, err-code)
_DLR = {
    "delivered": ("delivered", "0"),
    "stop": ("delivered", "0"),
    "unknown": ("failed", "3"),
    "unreachable": ("expired", "2"),
    "filtered": ("rejected", "6"),
    "landline": ("failed", "4"),
}


@dataclass
class VonageServer:
    key: str = "vonage-key"
    secret: str = "vonage-secret"
    signature_secret: str | None = None
    signature_method: str = "sha256"
    delay: float = 0.05
    inbound_url: str | None = None
    handsets: handsets.Handsets = field(default_factory=handsets.Handsets)
    receipts: list[tuple[dict[str, str], int | None]] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(0x0A00000000000001))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _loopback: Loopback | None = None
    _client: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        assert self._loopback is not None
        return self._loopback.url

    @property
    def provider_url(self) -> str:
        host = self.url.removeprefix("http://")
        return f"vonage://{self.key}:{self.secret}@{host}?from=Acme"

    async def __aenter__(self) -> VonageServer:
        self._client = httpx.AsyncClient(timeout=5)
        self._loopback = Loopback(
            Starlette(routes=[Route("/sms/json", self._send, methods=["POST"])])
        )
        await self._loopback.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        assert self._loopback is not None and self._client is not None
        await self._loopback.__aexit__(*exc)
        await self._client.aclose()

    async def settle(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _send(self, request: Request) -> JSONResponse:
        form = {k: str(v) for k, v in (await request.form()).items()}

        def refused(status: str, text: str) -> JSONResponse:
            return JSONResponse(
                {"message-count": "1", "messages": [{"status": status, "error-text": text}]}
            )

        if form.get("api_key") != self.key or form.get("api_secret") != self.secret:
            return refused("4", "Bad Credentials")
        to, text = form.get("to", ""), form.get("text", "")
        if not to or not form.get("from") or not text:
            return refused("2", "Missing to, from or text")
        number = f"+{to}"
        if number in self.handsets.opted_out:
            return refused("6", "Illegal Number: the number has opted out")
        fate = self.handsets.fate(number)
        if fate == "invalid":
            return refused("6", "Invalid Message: unroutable number prefix")
        if fate == "throttled" and self.handsets.texts[number] <= 2:
            return refused("1", "Throughput Rate Exceeded")
        parts = sms.split(text)
        entries = [
            {
                "to": to,
                "message-id": f"{next(self._ids):X}",
                "status": "0",
                "remaining-balance": "10.00",
                "message-price": "0.0333",
                "network": "12345",
                "client-ref": form.get("client-ref", ""),
            }
            for _ in parts
        ]
        if form.get("callback"):
            task = asyncio.ensure_future(self._receipts(form, entries, fate))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return JSONResponse({"message-count": str(len(entries)), "messages": entries})

    def signed(self, params: dict[str, str]) -> dict[str, str]:
        if not self.signature_secret:
            return params
        params = {**params, "timestamp": str(int(time.time())), "nonce": secrets.token_hex(8)}
        params["sig"] = receipts.vonage_signature(
            self.signature_secret, self.signature_method, params
        )
        return params

    async def _receipts(
        self, form: dict[str, str], entries: list[dict[str, str]], fate: str
    ) -> None:
        await asyncio.sleep(self.delay)
        status, err = _DLR.get(fate, ("delivered", "0"))
        now = datetime.now(UTC)
        for entry in entries:
            params = self.signed(
                {
                    "msisdn": form["to"],
                    "to": form["from"],
                    "network-code": "12345",
                    "messageId": entry["message-id"],
                    "price": "0.0333",
                    "status": "accepted" if fate == "silent" else status,
                    "scts": now.strftime("%y%m%d%H%M"),
                    "err-code": err,
                    "api-key": self.key,
                    "client-ref": form.get("client-ref", ""),
                    "message-timestamp": now.strftime("%Y-%m-%d %H:%M:%S"),
                }
            )
            self.receipts.append((params, await self.post(form["callback"], params)))
        if fate == "stop" and self.inbound_url:
            self.handsets.opted_out.add(f"+{form['to']}")
            inbound = self.signed(
                {
                    "msisdn": form["to"],
                    "to": form["from"],
                    "messageId": f"{next(self._ids):X}",
                    "text": "STOP",
                    "type": "text",
                    "keyword": "STOP",
                    "api-key": self.key,
                    "message-timestamp": now.strftime("%Y-%m-%d %H:%M:%S"),
                }
            )
            await self.post(self.inbound_url, inbound)

    async def post(self, url: str, params: dict[str, str]) -> int | None:
        assert self._client is not None
        try:
            return (await self._client.post(url, data=params)).status_code
        except httpx.HTTPError:
            return None
