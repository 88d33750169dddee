"""Provider events in: ``POST /v1/providers/{provider}/events/{token}``, and each account's
management of those URLs.

The URL carries the account: ``{token}`` is a random 32-character secret made when the account
sets up the provider (``PUT /v1/providers/{provider}``) and unknown to anyone else, so a request
to it is about that account only and an unknown token is 404. The token is not what
authenticates the request: each provider's own mechanism is, with the account's configuration
(``inbound/webhooks``):

- ``sns`` (Amazon SES through SNS): ``{"topic_arns": [...]}``; the SNS signature (versions 1
  and 2) under a certificate fetched from ``sns.<region>.amazonaws.com`` only, and a topic of
  the list. A ``SubscriptionConfirmation`` from such a topic is confirmed at once;
- ``sendgrid``: ``{"public_key": "<the verification key SendGrid shows>"}``;
- ``mailgun``: ``{"signing_key": "<the HTTP webhook signing key>"}``;
- ``postmark``: ``{"username": ..., "password": ..., "allowed_ips": [...]}``: put the
  credentials in the webhook URL at Postmark (``https://user:pass@host/v1/providers/...``).

Refusals: 401 without credentials or a signature, 403 for a forged, stale (older than
``POSTWARDEN_PROVIDER_MAX_AGE`` seconds) or replayed request, a topic or address not allowed,
a certificate from anywhere but SNS; nothing of a refused request is recorded.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from datetime import timedelta
from typing import Any, Literal

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from postwarden import errors
from postwarden.domain import clock
from postwarden.inbound.webhooks import apply, common, mailgun, postmark, sendgrid, sns
from postwarden.outbound.webhooks import net
from postwarden.store import db, provider_events, suppression
from postwarden.web import schemas
from postwarden.web.api import AccountDep, ConnDep, ReadConnDep

router = APIRouter(prefix="/v1/providers", tags=["providers"])

Provider = Literal["sns", "sendgrid", "mailgun", "postmark"]
MAX_BODY = 5 * 1024 * 1024
CERT_BYTES = 64 * 1024


class HookIn(BaseModel):
    model_config = {"extra": "forbid"}

    topic_arns: list[str] = Field(default_factory=list, description="sns: the allowed topics")
    public_key: str | None = Field(None, description="sendgrid: the verification key")
    signing_key: str | None = Field(None, description="mailgun: the webhook signing key")
    username: str | None = Field(None, description="postmark: basic-auth user")
    password: str | None = Field(None, description="postmark: basic-auth password")
    allowed_ips: list[str] = Field(default_factory=list, description="postmark: allowed senders")


class ProviderHook(BaseModel):
    """An account's events URL for one provider (its secrets are not shown again)."""

    provider: str
    path: str = Field(description="Where the provider posts its events (give it this URL)")
    topic_arns: list[str] = Field(default_factory=list)
    allowed_ips: list[str] = Field(default_factory=list)
    created_at: Any


class ProviderHookList(BaseModel):
    items: list[ProviderHook]


class ProviderEventsAccepted(BaseModel):
    """What became of the events of one request."""

    received: int
    duplicates: int
    applied: int
    unmatched: int
    ignored: int


class ProviderEvent(BaseModel):
    id: int
    provider: str
    event_id: str
    event_type: str
    received_at: Any
    occurred_at: Any = None
    recipient: str | None = None
    provider_message_id: str | None = None
    state: str
    message_id: int | None = None
    matched_by: str | None = None
    detail: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


class ProviderEventList(BaseModel):
    items: list[ProviderEvent]


def check_config(provider: str, values: dict[str, Any]) -> dict[str, Any]:
    """The configuration to keep for ``provider``; InvalidInput (ValueError for a malformed
    one) when it could not verify the provider's requests."""
    if provider not in provider_events.PROVIDERS:
        raise errors.NotFound(
            f"no provider {provider!r}; one of {', '.join(provider_events.PROVIDERS)}"
        )
    return _config(provider, HookIn.model_validate(values))


def _config(provider: str, body: HookIn) -> dict[str, Any]:
    if provider == "sns":
        if not body.topic_arns:
            raise errors.InvalidInput("sns needs topic_arns: the SNS topics allowed to post")
        return {"topic_arns": body.topic_arns}
    if provider == "sendgrid":
        try:
            sendgrid.public_key(body.public_key or "")
        except ValueError as exc:
            raise errors.InvalidInput(f"public_key: {exc}") from exc
        return {"public_key": body.public_key}
    if provider == "mailgun":
        if not body.signing_key:
            raise errors.InvalidInput("mailgun needs its signing_key")
        return {"signing_key": body.signing_key}
    if not body.username or not body.password:
        raise errors.InvalidInput("postmark needs a username and a password (basic auth)")
    try:
        postmark.networks(body.allowed_ips)
    except ValueError as exc:
        raise errors.InvalidInput(f"allowed_ips: {exc}") from exc
    return {"username": body.username, "password": body.password, "allowed_ips": body.allowed_ips}


def _shown(hook: provider_events.Hook) -> ProviderHook:
    return ProviderHook(
        provider=hook.provider,
        path=hook.path,
        topic_arns=hook.config.get("topic_arns", []),
        allowed_ips=hook.config.get("allowed_ips", []),
        created_at=hook.created_at,
    )


@router.put(
    "/{provider}",
    response_model=ProviderHook,
    operation_id="set_provider",
    summary="Set up a provider's events URL for the account (its path is in the answer)",
)
def set_provider(
    provider: Provider, body: HookIn, account: AccountDep, conn: ConnDep
) -> ProviderHook:
    hook = provider_events.set_hook(conn, account.id, provider, _config(provider, body))
    suppression.audit(conn, account.id, "api", "provider.set", provider)
    return _shown(hook)


@router.get(
    "",
    response_model=ProviderHookList,
    operation_id="list_providers",
    summary="The account's provider events URLs",
)
def list_providers(account: AccountDep, conn: ReadConnDep) -> ProviderHookList:
    return ProviderHookList(items=[_shown(h) for h in provider_events.hooks(conn, account.id)])


@router.delete(
    "/{provider}",
    status_code=204,
    operation_id="delete_provider",
    summary="Remove a provider's events URL (its requests get 404 from now on)",
)
def delete_provider(provider: Provider, account: AccountDep, conn: ConnDep) -> None:
    provider_events.delete_hook(conn, account.id, provider)


@router.get(
    "/events",
    response_model=ProviderEventList,
    operation_id="list_provider_events",
    summary="Provider events kept, by state (unmatched: to review, never dropped)",
)
def list_provider_events(
    account: AccountDep,
    conn: ReadConnDep,
    state: Literal["applied", "unmatched", "ignored"] = "unmatched",
    limit: int = 200,
) -> ProviderEventList:
    rows = provider_events.to_review(conn, account.id, state=state, limit=min(limit, 1000))
    return ProviderEventList(items=[ProviderEvent(**r) for r in rows])


# region receiving


class _Fetcher:
    """SNS certificates (cached: SNS signs with the same one for months) and subscription
    confirmations, fetched through the checked client (``outbound.webhooks.net``)."""

    def __init__(self, app: FastAPI) -> None:
        self.http_settings = app.state.settings.http
        self.client = net.client(self.http_settings, timeout=10.0, connections=4)
        self.certs: OrderedDict[str, bytes] = OrderedDict()

    async def cert(self, url: str) -> bytes:
        found = self.certs.get(url)
        if found is None:
            answer = await self._get(url, CERT_BYTES)
            if answer.status != 200 or b"BEGIN CERTIFICATE" not in answer.body:
                raise common.Refused(403, f"no certificate at {url} (HTTP {answer.status})")
            found = self.certs[url] = answer.body
            if len(self.certs) > 64:
                self.certs.popitem(last=False)
        return found

    async def confirm(self, url: str) -> int:
        return (await self._get(url, 4096)).status

    async def _get(self, url: str, limit: int) -> net.Answer:
        try:
            return await net.send(self.client, self.http_settings, "GET", url, limit=limit)
        except net.Refused as exc:
            raise common.Refused(403, exc.message) from exc
        except httpx.HTTPError as exc:
            raise common.Refused(403, f"{url} could not be fetched: {exc!r}") from exc


def _fetcher(request: Request) -> _Fetcher:
    state = request.app.state
    found = getattr(state, "provider_fetcher", None)
    if found is None:
        found = state.provider_fetcher = _Fetcher(request.app)
    return found  # type: ignore[no-any-return]


def _refused(exc: common.Refused) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Basic realm="postwarden"'} if exc.status == 401 else None
    return JSONResponse({"detail": exc.detail}, exc.status, headers=headers)


@router.post(
    "/{provider}/events/{token}",
    response_model=ProviderEventsAccepted,
    operation_id="receive_provider_events",
    summary="Where a provider posts its events (Amazon SNS, SendGrid, Mailgun, Postmark)",
    responses={
        401: {"model": schemas.Error, "description": "No or wrong credentials or signature"},
        403: {"model": schemas.Error, "description": "Forged, stale or replayed; not allowed"},
        404: {"model": schemas.Error, "description": "No such events URL"},
    },
)
async def receive_provider_events(
    provider: Provider, token: str, request: Request
) -> ProviderEventsAccepted | JSONResponse:
    state = request.app.state
    settings = state.settings
    body = await request.body()
    if len(body) > MAX_BODY:
        return JSONResponse({"detail": "the body is too large"}, 413)

    def lookup() -> provider_events.Hook | None:
        with db.reader(state.engine).connect() as conn:
            return provider_events.hook_by_token(conn, provider, token)

    hook = await run_in_threadpool(lookup)
    if hook is None:
        return JSONResponse({"detail": "no such events URL"}, 404)
    now = clock.now()
    max_age = timedelta(seconds=settings.provider_max_age)
    nonce: str | None = None
    try:
        if provider == "sns":
            message = sns.envelope(body)
            cert = await _fetcher(request).cert(sns.cert_url(message))
            sns.verify(message, cert, hook.config.get("topic_arns", ()))
            if message["Type"] == sns.SUBSCRIBE:
                events = [await _confirm(request, message)]
            elif message["Type"] == sns.NOTIFICATION:
                events = sns.parse(message)
            else:
                events = []
        elif provider == "sendgrid":
            nonce = sendgrid.verify(
                hook.config.get("public_key", ""), request.headers, body, now=now, max_age=max_age
            )
            events = sendgrid.parse(body)
        elif provider == "mailgun":
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                raise common.Refused(401, "no Mailgun signature")
            nonce = mailgun.verify(
                hook.config.get("signing_key", ""), payload, now=now, max_age=max_age
            )
            events = mailgun.parse(payload)
        else:
            postmark.verify(
                hook.config,
                request.headers.get("authorization"),
                request.client.host if request.client else None,
            )
            events = postmark.parse(body)
    except common.Refused as exc:
        return _refused(exc)
    except ValueError as exc:
        return JSONResponse({"detail": str(exc)}, 400)

    def write() -> apply.Summary:
        policy = suppression.Policy(settings.soft_bounce_limit, settings.soft_bounce_days)
        with state.engine.begin() as conn:
            return apply.apply(
                conn,
                account_id=hook.account_id,
                provider=provider,
                events=events,
                secret=state.secret,
                policy=policy,
                nonce=f"{hook.account_id}:{nonce}" if nonce else None,
            )

    try:
        summary = await run_in_threadpool(write)
    except common.Refused as exc:
        return _refused(exc)
    return ProviderEventsAccepted(
        received=summary.received,
        duplicates=summary.duplicates,
        applied=summary.applied,
        unmatched=summary.unmatched,
        ignored=summary.ignored,
    )


async def _confirm(request: Request, message: dict[str, Any]) -> common.Event:
    """Confirm an SNS subscription of an allowed topic (its SubscribeURL, pinned to SNS and
    fetched through the checked client); kept as an event of its own."""
    url = sns.subscribe_url(message)
    status = await _fetcher(request).confirm(url)
    if status != 200:
        raise common.Refused(403, f"SNS did not confirm the subscription (HTTP {status})")
    return common.Event(
        event_id=str(message.get("MessageId")),
        event_type=sns.SUBSCRIBE,
        kind=None,
        occurred_at=common.when(message.get("Timestamp")),
        recipient=None,
        detail=f"subscription to {message.get('TopicArn')} confirmed",
        payload={k: v for k, v in message.items() if k != "Signature"},
    )


# endregion
