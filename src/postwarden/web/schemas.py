"""The API's answers as named schemas, so that clients generated from ``/openapi.json`` get
typed objects (a message, an event, an attempt, a broadcast, a suppression, a contact, a
webhook endpoint, an error), and the payloads of the webhooks Postwarden sends, described in
the spec's ``webhooks`` section (OpenAPI 3.1) so a host application can generate its handler.

Request bodies stay in ``intake/schemas.py``; these describe what the reads in ``store``
return (the same dicts the UI renders), field by field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from postwarden.store import webhooks


class Error(BaseModel):
    """A refusal: what is wrong, in words (422s also list each field's problem)."""

    detail: str
    errors: list[dict[str, Any]] | None = None


_REFUSAL_WORDS = {
    400: "The body is not JSON, or refused",
    401: "No valid API key",
    404: "Not found (or another account's)",
    409: "Not possible in its current state",
    413: "The body is too large",
    422: "Not valid: the detail says what (and errors, each field's problem)",
}


def refused(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these refusals, all in :class:`Error`'s shape."""
    return {code: {"model": Error, "description": _REFUSAL_WORDS[code]} for code in codes}


REFUSALS = refused(400, 401, 413, 422)
"""The refusals any /v1 operation can give (the app documents them on every one)."""


# region messages


class MessageSummary(BaseModel):
    """One row of the mail log."""

    id: int
    to: str
    channel: str
    status: str
    reason: str | None = None
    detail: str | None = None
    category: str = ""
    broadcast_id: int | None = None
    attempts: int = 0
    created_at: datetime
    updated_at: datetime
    flags: list[str] = Field(default_factory=list)
    resend_of: int | None = None
    subject: str | None = None


class MessagePage(BaseModel):
    items: list[MessageSummary]
    next_cursor: str | None = None


class Event(BaseModel):
    """One fact learned about a message, with its evidence."""

    kind: str
    source: str
    occurred_at: datetime
    status_after: str
    reason: str | None = None
    hard: bool | None = None
    code: str | None = None
    detail: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    inbound_id: int | None = None


class Attempt(BaseModel):
    """One delivery attempt: where it went and what the remote side said."""

    number: int
    started_at: datetime
    duration_ms: int
    via: str
    remote: str | None = None
    outcome: str
    code: int | None = None
    enhanced: str | None = None
    text: str = ""
    transcript: str = ""


class Explanation(BaseModel):
    group: str
    explanation: str
    next_step: str


class Attachment(BaseModel):
    filename: str
    content_type: str
    size: int
    stored: bool


class SuppressionOfMessage(BaseModel):
    reason: str
    detail: str = ""
    category: str = ""
    created_at: datetime
    message_id: int | None = None


class Message(BaseModel):
    """One message: its status and reason in words, its timeline and its attempts."""

    id: int
    account_id: int
    broadcast_id: int | None = None
    contact_id: int | None = None
    resend_of: int | None = None
    channel: str
    to: str
    from_: str = Field(alias="from")
    from_name: str = ""
    subject: str
    category: str = ""
    status: str
    reason: str | None = None
    detail: str | None = None
    flags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = None
    has_attachments: bool = False
    track: bool | None = None
    next_attempt_at: datetime | None = None
    provider_message_id: str | None = None
    created_at: datetime
    updated_at: datetime
    last_event_at: datetime | None = None
    resend_refusal: str | None = None
    explanation: Explanation | None = None
    events: list[Event] = Field(default_factory=list)
    attempts: list[Attempt] = Field(default_factory=list)
    attachments: list[Attachment] = Field(default_factory=list)
    resent_as: list[int] = Field(default_factory=list)
    suppression: SuppressionOfMessage | None = None

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class Broadcast(BaseModel):
    """A broadcast and how many of its messages are in each status."""

    id: int
    account_id: int
    category: str = ""
    total: int
    created_at: datetime
    subject: str
    from_: str = Field(alias="from")
    counts: dict[str, int]

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class Contact(BaseModel):
    id: int
    name: str = ""
    email: str | None = None
    phone: str | None = None
    preferences: dict[str, list[str]] = Field(default_factory=dict)
    created_at: datetime | None = None


class AccountSettings(BaseModel):
    name: str
    tracking: bool


class EngagementReport(BaseModel):
    """Open and click rates per broadcast, category or day (see ``queries.engagement_report``)."""

    group: str
    since: str
    until: str
    rows: list[dict[str, Any]]
    categories_read_most: list[dict[str, Any]]


# endregion
# region suppressions and blocks


class Suppression(BaseModel):
    """An address not sent to, and why."""

    id: int
    address: str
    category: str = ""
    reason: str
    detail: str = ""
    source: str
    message_id: int | None = None
    created_at: datetime


class SuppressionList(BaseModel):
    items: list[Suppression]


class SuppressionAdded(BaseModel):
    address: str
    category: str
    added: bool


class SuppressionRemoved(BaseModel):
    address: str
    removed: int
    dropped_messages: list[int] = Field(description="Dropped for it in the last 30 days")


class Block(BaseModel):
    id: int
    pattern: str
    note: str = ""
    created_at: datetime


class BlockList(BaseModel):
    items: list[Block]


class BlockAdded(BaseModel):
    pattern: str
    added: bool


class BlockRemoved(BaseModel):
    pattern: str
    removed: bool


# endregion
# region webhooks out: endpoints, deliveries, attempts

EventType = Literal[
    "message.status_changed",
    "message.bounced_after_delivery",
    "message.complained",
    "message.opened",
    "message.clicked",
    "suppression.added",
    "suppression.removed",
    "sms.receipt",
]
assert set(EventType.__args__) == set(webhooks.EVENT_TYPES)  # type: ignore[attr-defined]


class WebhookEndpoint(BaseModel):
    """Where an account's webhooks go, what it takes, and whether it works."""

    id: int
    url: str
    description: str = ""
    event_types: list[EventType] = Field(description="Empty: every type")
    enabled: bool
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    failing_since: datetime | None = None
    failures: int = 0
    created_at: datetime
    counts: dict[str, int] = Field(
        default_factory=dict, description="Deliveries per state (pending, delivered, failed)"
    )


class WebhookEndpointWithSecret(WebhookEndpoint):
    """An endpoint as created or after a rotation: its signing secret (``whsec_...``), and
    the previous one while it still signs."""

    secret: str
    previous_secret: str | None = None
    previous_expires_at: datetime | None = None


class WebhookEndpointList(BaseModel):
    items: list[WebhookEndpoint]


class WebhookAttempt(BaseModel):
    """One try of a webhook: the status code (none: no answer), the first KB of the answer."""

    number: int
    started_at: datetime
    duration_ms: int
    status_code: int | None = None
    response: str = ""
    error: str | None = None


class WebhookDelivery(BaseModel):
    """One webhook to one endpoint (``failed``: a dead letter, to replay)."""

    id: int
    endpoint_id: int
    url: str
    webhook_id: str
    event_type: str
    created_at: datetime
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    finished_at: datetime | None = None


class WebhookDeliveryDetail(WebhookDelivery):
    payload: dict[str, Any]
    attempt_log: list[WebhookAttempt]


class WebhookDeliveryList(BaseModel):
    items: list[WebhookDelivery]


class Replayed(BaseModel):
    replayed: int


# endregion
# region the webhooks' payloads (the spec's "webhooks" section)


class MessageEventData(BaseModel):
    """What a message event says: the message, and the fact that caused it."""

    message_id: int
    channel: str
    to: str
    category: str
    broadcast_id: int | None
    metadata: dict[str, Any]
    status: str = Field(description="The message's status now")
    previous_status: str = Field(description="Its status before this fact")
    flags: list[str]
    event: str = Field(description="The kind of fact (delivered, bounced, opened...)")
    source: str = Field(description="Who told (smtp, dsn, sns, sendgrid, tracking...)")
    occurred_at: datetime
    reason: str | None
    hard: bool | None
    code: str | None
    detail: str | None


class EngagementData(MessageEventData):
    machine: bool = Field(description="A proxy, a prefetcher or a scanner, not a person")
    link: int | None = Field(description="Clicks: the link's index in the message")


class SuppressionAddedData(BaseModel):
    address: str
    category: str
    reason: str
    detail: str
    source: str
    message_id: int | None


class SuppressionRemovedData(BaseModel):
    address: str
    category: str | None
    actor: str


def _payload(event_type: str, data: type[BaseModel]) -> type[BaseModel]:
    name = "".join(p.capitalize() for p in event_type.replace(".", "_").split("_")) + "Webhook"
    model = type(
        name,
        (BaseModel,),
        {
            "__annotations__": {
                "type": Literal[event_type],  # type: ignore[valid-type]
                "timestamp": datetime,
                "data": data,
            },
            "__doc__": webhooks.EVENT_TYPES[event_type],
            "__module__": __name__,
        },
    )
    return model


WEBHOOK_PAYLOADS: dict[str, type[BaseModel]] = {
    webhooks.STATUS_CHANGED: _payload(webhooks.STATUS_CHANGED, MessageEventData),
    webhooks.BOUNCED_AFTER_DELIVERY: _payload(webhooks.BOUNCED_AFTER_DELIVERY, MessageEventData),
    webhooks.COMPLAINED: _payload(webhooks.COMPLAINED, MessageEventData),
    webhooks.OPENED: _payload(webhooks.OPENED, EngagementData),
    webhooks.CLICKED: _payload(webhooks.CLICKED, EngagementData),
    webhooks.SUPPRESSION_ADDED: _payload(webhooks.SUPPRESSION_ADDED, SuppressionAddedData),
    webhooks.SUPPRESSION_REMOVED: _payload(webhooks.SUPPRESSION_REMOVED, SuppressionRemovedData),
    webhooks.SMS_RECEIPT: _payload(webhooks.SMS_RECEIPT, MessageEventData),
}
"""The body of each webhook type, as the outbox writes it (``store.webhooks.payload``)."""

# endregion
