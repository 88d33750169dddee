"""A Twilio-compatible Messages API on loopback, answering like Twilio for the test handsets.

``POST /2010-04-01/Accounts/{SID}/Messages.json`` (form, basic auth with the SID and the auth
token) creates a message ``SM…`` (201, status ``queued``, or ``accepted`` through a messaging
service) or refuses it with Twilio's error JSON (21211 invalid number, 21610 unsubscribed
recipient, 21617 body too long, 20003 authentication, 20429 too many requests). Then, after
``delay`` seconds each, it posts status callbacks to the message's ``StatusCallback`` as
Twilio does: ``sent``, then ``delivered`` or ``undelivered``/``failed`` with the ErrorCode,
each signed with ``X-Twilio-Signature`` and carrying ``I-Twilio-Idempotency-Token``. A STOP
handset then replies "STOP" to ``inbound_url`` (the number's messaging webhook), and is
opted out from then on. ``GET …/Messages/{Sid}.json`` reads a message back.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from postwarden.domain import receipts, sms
from postwarden.testing import handsets
from postwarden.testing.http import Loopback

API = "2010-04-01"
_FINAL = {
    "unknown": ("undelivered", "30005"),
    "unreachable": ("undelivered", "30003"),
    "filtered": ("undelivered", "30007"),
    "landline": ("undelivered", "30006"),
}


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status_code=status,
    )


@dataclass
class Callback:
    url: str
    params: dict[str, str]
    status: int | None  # the receiver's HTTP status; None when it could not be reached


@dataclass
class TwilioServer:
    sid: str = "AC" + "0" * 32
    token: str = "twilio-test-token"
    delay: float = 0.05
    inbound_url: str | None = None
    handsets: handsets.Handsets = field(default_factory=handsets.Handsets)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    callbacks: list[Callback] = field(default_factory=list)
    requests: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _loopback: Loopback | None = None
    _client: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        assert self._loopback is not None
        return self._loopback.url

    @property
    def provider_url(self) -> str:
        """The ``POSTWARDEN_SMS_PROVIDER`` value pointing at this server."""
        host = self.url.removeprefix("http://")
        return f"twilio://{self.sid}:{self.token}@{host}?from=%2B12025550199"

    async def __aenter__(self) -> TwilioServer:
        app = Starlette(
            routes=[
                Route(f"/{API}/Accounts/{{sid}}/Messages.json", self._create, methods=["POST"]),
                Route(f"/{API}/Accounts/{{sid}}/Messages/{{msid}}.json", self._fetch),
            ]
        )
        self._client = httpx.AsyncClient(timeout=5)
        self._loopback = Loopback(app)
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
        """Wait until every scheduled callback has been posted."""
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _authorised(self, request: Request, sid: str) -> bool:
        expected = base64.b64encode(f"{self.sid}:{self.token}".encode()).decode()
        return sid == self.sid and request.headers.get("authorization") == f"Basic {expected}"

    async def _fetch(self, request: Request) -> JSONResponse:
        if not self._authorised(request, request.path_params["sid"]):
            return _error(401, 20003, "Authenticate")
        found = self.messages.get(request.path_params["msid"])
        return JSONResponse(found) if found else _error(404, 20404, "Not Found")

    async def _create(self, request: Request) -> JSONResponse:
        self.requests += 1
        if not self._authorised(request, request.path_params["sid"]):
            return _error(401, 20003, "Authenticate")
        form = {k: str(v) for k, v in (await request.form()).items()}
        to, body = form.get("To", ""), form.get("Body", "")
        sender, service = form.get("From", ""), form.get("MessagingServiceSid", "")
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.")
        if not sender and not service:
            return _error(400, 21603, "A 'From' phone number is required.")
        if not body:
            return _error(400, 21602, "Message body is required.")
        if len(body) > 1600:
            return _error(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        if not (to.startswith("+") and to[1:].isdigit()):
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if to in self.handsets.opted_out:
            return _error(400, 21610, "Attempt to send to unsubscribed recipient")
        fate = self.handsets.fate(to)
        if fate == "invalid":
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if fate == "throttled" and self.handsets.texts[to] <= 2:
            response = _error(429, 20429, "Too Many Requests")
            response.headers["Retry-After"] = "1"
            return response
        msid = "SM" + uuid.uuid4().hex
        now = format_datetime(datetime.now(UTC))
        message = {
            "account_sid": self.sid,
            "api_version": API,
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sender or None,
            "messaging_service_sid": service or None,
            "num_media": "0",
            "num_segments": str(sms.encode(body).segments),
            "price": None,
            "price_unit": "USD",
            "sid": msid,
            "status": "accepted" if service else "queued",
            "to": to,
            "uri": f"/{API}/Accounts/{self.sid}/Messages/{msid}.json",
        }
        self.messages[msid] = message
        if form.get("StatusCallback"):
            self._spawn(self._progress(message, form["StatusCallback"], fate))
        return JSONResponse(message, status_code=201)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _progress(self, message: dict[str, Any], callback: str, fate: str) -> None:
        await asyncio.sleep(self.delay)
        await self._status(message, callback, "sent")
        if fate == "silent":
            return
        await asyncio.sleep(self.delay)
        status, code = _FINAL.get(fate, ("delivered", None))
        await self._status(message, callback, status, code)
        if fate == "stop" and self.inbound_url:
            await asyncio.sleep(self.delay)
            await self._reply(message, "STOP")

    async def _status(
        self, message: dict[str, Any], url: str, status: str, code: str | None = None
    ) -> None:
        message["status"] = status
        message["error_code"] = int(code) if code else None
        params = {
            "AccountSid": self.sid,
            "ApiVersion": API,
            "From": message["from"] or "",
            "MessageSid": message["sid"],
            "MessageStatus": status,
            "SmsSid": message["sid"],
            "SmsStatus": status,
            "To": message["to"],
        }
        if message["messaging_service_sid"]:
            params["MessagingServiceSid"] = message["messaging_service_sid"]
        if code:
            params["ErrorCode"] = code
        if status in ("delivered", "undelivered"):
            params["RawDlrDoneDate"] = datetime.now(UTC).strftime("%y%m%d%H%M")
        await self.post(url, params)

    async def _reply(self, message: dict[str, Any], text: str) -> None:
        self.handsets.opted_out.add(message["to"])
        sid = "SM" + uuid.uuid4().hex
        assert self.inbound_url is not None
        await self.post(
            self.inbound_url,
            {
                "AccountSid": self.sid,
                "ApiVersion": API,
                "Body": text,
                "From": message["to"],
                "MessageSid": sid,
                "NumMedia": "0",
                "NumSegments": "1",
                "OptOutType": "STOP",
                "SmsMessageSid": sid,
                "SmsSid": sid,
                "SmsStatus": "received",
                "To": message["from"] or "",
            },
        )

    async def post(self, url: str, params: dict[str, str], token: str | None = None) -> Callback:
        """Post a signed webhook as Twilio does (tests also use it to replay one)."""
        assert self._client is not None
        headers = {
            "X-Twilio-Signature": receipts.twilio_signature(token or self.token, url, params),
            "I-Twilio-Idempotency-Token": secrets.token_hex(16),
            "User-Agent": "TwilioProxy/1.1",
        }
        try:
            response = await self._client.post(url, data=params, headers=headers)
            status: int | None = response.status_code
        except httpx.HTTPError:
            status = None
        record = Callback(url, params, status)
        self.callbacks.append(record)
        return record
