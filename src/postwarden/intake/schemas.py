"""The API's request and response bodies (Pydantic), shared by the HTTP API and the CLI.

Header fields refuse CR and LF (header injection); sizes are bounded so a refused request is
refused before anything is stored.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict


def _no_crlf(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain CR or LF (header injection)")
    return value


HeaderText = Annotated[str, AfterValidator(_no_crlf)]
Category = Annotated[
    str, StringConstraints(max_length=100, pattern=r"^[A-Za-z0-9_.:/-]*$"), AfterValidator(_no_crlf)
]
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")
_RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "x-postwarden-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "return-path",
    }
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AttachmentIn(Strict):
    filename: Annotated[HeaderText, StringConstraints(min_length=1, max_length=255)]
    content_type: Annotated[
        HeaderText, StringConstraints(pattern=r"^[\w.+-]+/[\w.+-]+$", max_length=255)
    ] = "application/octet-stream"
    content_base64: str

    def data(self) -> bytes:
        return base64.b64decode(self.content_base64, validate=True)

    @field_validator("content_base64")
    @classmethod
    def _decodes(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("is not valid base64") from exc
        return value


class ContentIn(Strict):
    from_: Annotated[HeaderText, StringConstraints(min_length=3, max_length=400)] = Field(
        alias="from", description='Sender, "addr@example.com" or "Name <addr@example.com>".'
    )
    subject: Annotated[HeaderText, StringConstraints(max_length=998)]
    text: str | None = None
    html: str | None = None
    category: Category = ""
    headers: dict[str, HeaderText] = Field(
        default_factory=dict, description="Extra headers such as Reply-To."
    )

    @model_validator(mode="after")
    def _has_body(self) -> ContentIn:
        if self.text is None and self.html is None:
            raise ValueError("give text, html or both")
        return self

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"{name} is set by Postwarden")
        return value


class MessageIn(ContentIn):
    to: Annotated[HeaderText, StringConstraints(min_length=3, max_length=320)]
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=20)
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    track: bool | None = Field(
        None, description="Track opens and clicks; unset: the account's setting."
    )


class _Recipient(TypedDict, total=False):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    email: Annotated[HeaderText, StringConstraints(max_length=320)] | None
    contact_id: int | None
    metadata: dict[str, Any] | None


def _recipient_object(value: Any) -> Any:
    if not isinstance(value, dict):
        raise PydanticCustomError(
            "model_type",
            "Input should be a valid dictionary or instance of {class_name}",
            {"class_name": "RecipientIn"},
        )
    return value


def _one_of(value: dict[str, Any]) -> dict[str, Any]:
    if (value.get("email") is None) == (value.get("contact_id") is None):
        raise ValueError('give exactly one of "email" or "contact_id"')
    return value


RecipientIn = Annotated[_Recipient, BeforeValidator(_recipient_object), AfterValidator(_one_of)]
"""One broadcast recipient, validated into a plain dict (``email`` or ``contact_id``): a
100,000-recipient broadcast builds no model instance per recipient."""


class BroadcastIn(ContentIn):
    recipients: list[RecipientIn] = Field(min_length=1)
    track: bool | None = Field(
        None, description="Track opens and clicks; unset: the account's setting."
    )


class ContactIn(Strict):
    name: Annotated[HeaderText, StringConstraints(max_length=200)] = ""
    email: Annotated[HeaderText, StringConstraints(max_length=320)] | None = None
    phone: Annotated[HeaderText, StringConstraints(max_length=32)] | None = None
    preferences: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Channels per category, e.g. {"billing": ["email"], "*": ["email", "sms"]}; '
        'a category not listed follows "*", and with no "*" every channel is allowed.',
    )


class Accepted(BaseModel):
    id: int
    status: str


class BroadcastAccepted(BaseModel):
    id: int
    counts: dict[str, int]


class AddressIn(Strict):
    address: Annotated[HeaderText, StringConstraints(min_length=3, max_length=320)]
    category: Category = ""
    note: str = ""


class ResendIn(Strict):
    to: Annotated[HeaderText, StringConstraints(min_length=3, max_length=320)] | None = None


class EventOut(BaseModel):
    kind: str
    source: str
    occurred_at: datetime
    status_after: str
    reason: str | None = None
    hard: bool | None = None
    code: str | None = None
    detail: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
