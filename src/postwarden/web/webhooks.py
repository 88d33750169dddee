"""Webhooks out in the JSON API (``/v1/webhooks``): endpoints, their deliveries and attempts,
dead letters and replays. The same operations as the web UI's /webhooks pages and the CLI."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from postwarden.outbound.webhooks import net
from postwarden.store import suppression, webhooks
from postwarden.store.accounts import Account
from postwarden.web import schemas
from postwarden.web.api import MAX_ID, AccountDep, Id, ReadConnDep

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class EndpointIn(BaseModel):
    model_config = {"extra": "forbid"}

    url: str = Field(min_length=8, max_length=2000, description="http(s); public addresses only")
    event_types: list[schemas.EventType] = Field(
        default_factory=list, description="What it takes; empty: every type"
    )
    description: str = Field("", max_length=200)


class EndpointPatch(BaseModel):
    model_config = {"extra": "forbid"}

    url: str | None = Field(None, min_length=8, max_length=2000)
    event_types: list[schemas.EventType] | None = None
    description: str | None = Field(None, max_length=200)
    enabled: bool | None = Field(None, description="true: start afresh after being disabled")


class RotateIn(BaseModel):
    model_config = {"extra": "forbid"}

    overlap_seconds: float | None = Field(
        None,
        ge=0,
        le=90 * 86400,
        description="How long the previous secret still signs (default: a day; at most 90)",
    )


class ReplayIn(BaseModel):
    model_config = {"extra": "forbid"}

    since: datetime
    until: datetime
    endpoint_id: int | None = Field(None, ge=1, le=MAX_ID)
    failed_only: bool = Field(True, description="false: also what was delivered")


class EventTypeInfo(BaseModel):
    type: str
    description: str


class EventTypeList(BaseModel):
    items: list[EventTypeInfo]


def endpoint_out(
    endpoint: webhooks.Endpoint, counts: dict[str, int] | None = None, *, secret: bool = False
) -> schemas.WebhookEndpoint:
    fields: dict[str, Any] = {
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
        "disabled_at": endpoint.disabled_at,
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": endpoint.failing_since,
        "failures": endpoint.failures,
        "created_at": endpoint.created_at,
        "counts": counts or {},
    }
    if not secret:
        return schemas.WebhookEndpoint(**fields)
    return schemas.WebhookEndpointWithSecret(
        **fields,
        secret=endpoint.secret,
        previous_secret=endpoint.previous_secret,
        previous_expires_at=endpoint.previous_expires_at,
    )


def _write(request: Request, work: Any) -> Any:
    with request.app.state.engine.begin() as conn:
        return work(conn)


@router.get(
    "/event-types",
    response_model=EventTypeList,
    operation_id="list_webhook_event_types",
    summary="The event types an endpoint can take",
)
def list_event_types(account: AccountDep) -> EventTypeList:
    return EventTypeList(
        items=[EventTypeInfo(type=k, description=v) for k, v in webhooks.EVENT_TYPES.items()]
    )


@router.post(
    "/endpoints",
    status_code=201,
    response_model=schemas.WebhookEndpointWithSecret,
    operation_id="create_webhook_endpoint",
    summary="Add an endpoint; its signing secret is in the answer",
)
async def create_endpoint(
    body: EndpointIn, account: AccountDep, request: Request
) -> schemas.WebhookEndpoint:
    await net.check_url(body.url, request.app.state.settings.http)

    def work(conn: Any) -> webhooks.Endpoint:
        made = webhooks.create_endpoint(
            conn, account.id, body.url, event_types=body.event_types, description=body.description
        )
        suppression.audit(conn, account.id, "api", "webhook.create", body.url)
        return made

    return endpoint_out(await run_in_threadpool(_write, request, work), secret=True)


@router.get(
    "/endpoints",
    response_model=schemas.WebhookEndpointList,
    operation_id="list_webhook_endpoints",
    summary="The account's endpoints, with their deliveries per state",
)
def list_endpoints(account: AccountDep, conn: ReadConnDep) -> schemas.WebhookEndpointList:
    counts = webhooks.counts(conn, account.id)
    return schemas.WebhookEndpointList(
        items=[endpoint_out(e, counts.get(e.id)) for e in webhooks.list_endpoints(conn, account.id)]
    )


@router.get(
    "/endpoints/{endpoint_id}",
    response_model=schemas.WebhookEndpoint,
    operation_id="get_webhook_endpoint",
    summary="One endpoint",
)
def get_endpoint(
    endpoint_id: Id, account: AccountDep, conn: ReadConnDep
) -> schemas.WebhookEndpoint:
    found = webhooks.get_endpoint(conn, account.id, endpoint_id)
    return endpoint_out(found, webhooks.counts(conn, account.id).get(endpoint_id))


@router.patch(
    "/endpoints/{endpoint_id}",
    response_model=schemas.WebhookEndpoint,
    operation_id="update_webhook_endpoint",
    summary="Change an endpoint, disable it, or enable it again",
)
async def update_endpoint(
    endpoint_id: Id, body: EndpointPatch, account: AccountDep, request: Request
) -> schemas.WebhookEndpoint:
    if body.url is not None:
        await net.check_url(body.url, request.app.state.settings.http)

    def work(conn: Any) -> webhooks.Endpoint:
        changed = webhooks.update_endpoint(
            conn,
            account.id,
            endpoint_id,
            url=body.url,
            event_types=body.event_types,
            description=body.description,
            enabled=body.enabled,
        )
        suppression.audit(conn, account.id, "api", "webhook.update", str(endpoint_id))
        return changed

    return endpoint_out(await run_in_threadpool(_write, request, work))


@router.delete(
    "/endpoints/{endpoint_id}",
    status_code=204,
    operation_id="delete_webhook_endpoint",
    summary="Remove an endpoint and its deliveries",
)
def delete_endpoint(endpoint_id: Id, account: AccountDep, request: Request) -> Response:
    def work(conn: Any) -> None:
        webhooks.delete_endpoint(conn, account.id, endpoint_id)
        suppression.audit(conn, account.id, "api", "webhook.delete", str(endpoint_id))

    _write(request, work)
    return Response(status_code=204)


@router.post(
    "/endpoints/{endpoint_id}/rotate-secret",
    response_model=schemas.WebhookEndpointWithSecret,
    operation_id="rotate_webhook_secret",
    summary="A new signing secret; the previous one also signs during the overlap",
)
def rotate_secret(
    endpoint_id: Id, account: AccountDep, request: Request, body: RotateIn | None = None
) -> schemas.WebhookEndpoint:
    seconds = body.overlap_seconds if body and body.overlap_seconds is not None else None
    overlap = timedelta(
        seconds=request.app.state.settings.webhooks.secret_overlap if seconds is None else seconds
    )
    rotated = _write(
        request,
        lambda conn: rotate(conn, account, endpoint_id, overlap, actor="api"),
    )
    return endpoint_out(rotated, secret=True)


def rotate(
    conn: Any, account: Account, endpoint_id: int, overlap: timedelta, *, actor: str
) -> webhooks.Endpoint:
    rotated = webhooks.rotate_secret(conn, account.id, endpoint_id, overlap=overlap)
    suppression.audit(conn, account.id, actor, "webhook.rotate", str(endpoint_id))
    return rotated


@router.get(
    "/deliveries",
    response_model=schemas.WebhookDeliveryList,
    operation_id="list_webhook_deliveries",
    summary="Webhooks sent or to send, newest first (state=failed: the dead letters)",
)
def list_deliveries(
    account: AccountDep,
    conn: ReadConnDep,
    endpoint_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    state: Annotated[str | None, Query(pattern="^(pending|delivered|failed)$")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="The last id of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> schemas.WebhookDeliveryList:
    rows = webhooks.list_deliveries(
        conn,
        account.id,
        endpoint_id=endpoint_id,
        state=state,
        since=since,
        until=until,
        before_id=before,
        limit=limit,
    )
    return schemas.WebhookDeliveryList(items=[schemas.WebhookDelivery(**r) for r in rows])


@router.get(
    "/deliveries/{delivery_id}",
    response_model=schemas.WebhookDeliveryDetail,
    operation_id="get_webhook_delivery",
    summary="One webhook: its payload and every attempt (status, first KB, duration)",
)
def get_delivery(
    delivery_id: Id, account: AccountDep, conn: ReadConnDep
) -> schemas.WebhookDeliveryDetail:
    return schemas.WebhookDeliveryDetail(**webhooks.get_delivery(conn, account.id, delivery_id))


@router.post(
    "/deliveries/{delivery_id}/replay",
    response_model=schemas.Replayed,
    operation_id="replay_webhook_delivery",
    summary="Send one webhook again (same webhook-id)",
)
def replay_delivery(delivery_id: Id, account: AccountDep, request: Request) -> schemas.Replayed:
    def work(conn: Any) -> None:
        webhooks.replay(conn, account.id, delivery_id)
        suppression.audit(conn, account.id, "api", "webhook.replay", str(delivery_id))

    _write(request, work)
    return schemas.Replayed(replayed=1)


@router.post(
    "/replay",
    response_model=schemas.Replayed,
    operation_id="replay_webhooks",
    summary="Send again the webhooks of a time range (the dead letters, or all)",
)
def replay_range(body: ReplayIn, account: AccountDep, request: Request) -> schemas.Replayed:
    def work(conn: Any) -> int:
        n = webhooks.replay_range(
            conn,
            account.id,
            since=body.since,
            until=body.until,
            endpoint_id=body.endpoint_id,
            failed_only=body.failed_only,
        )
        suppression.audit(
            conn, account.id, "api", "webhook.replay", f"{body.since}..{body.until}", count=n
        )
        return n

    return schemas.Replayed(replayed=_write(request, work))


def install(app: Any) -> None:
    """The routes, and the webhooks' payloads in the spec's ``webhooks`` section."""
    app.include_router(router, responses=schemas.refused(404, 409))
    for event_type, model in schemas.WEBHOOK_PAYLOADS.items():
        _describe(app, event_type, model)


def _describe(app: Any, event_type: str, model: type[BaseModel]) -> None:
    def receive(body: Any) -> None: ...

    receive.__annotations__ = {"body": model, "return": None}
    app.webhooks.post(
        event_type,
        operation_id=f"webhook_{event_type.replace('.', '_')}",
        summary=webhooks.EVENT_TYPES[event_type],
        description=_SIGNED,
        tags=["webhooks"],
        status_code=200,
    )(receive)


_SIGNED = (
    "Posted to each endpoint that takes this type, signed as the Standard Webhooks "
    "specification says: headers `webhook-id` (the same on every retry: deduplicate on it), "
    "`webhook-timestamp` (seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256>` of "
    '`"{webhook-id}.{webhook-timestamp}.{body}"` under the endpoint\'s secret; two of them, '
    "space-separated, while a rotated secret overlaps). Answer 2xx within the timeout; "
    "anything else is retried with backoff for 3 days."
)
