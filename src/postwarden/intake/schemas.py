"""The API's request and response bodies (Pydantic), shared by the HTTP API and the CLI.

What cannot be encoded is refused here, before anything is stored, with the field named:
header fields (subject, from, to, display names, custom headers, attachment filenames) hold
one line of text, so no line or paragraph separator (anything ``str.splitlines`` splits on,
CR and LF being header injection), no other control character but TAB and no DEL; and no
string anywhere (bodies, metadata keys and values, preferences, notes) holds NUL (PostgreSQL
cannot store it) or a lone surrogate (not text: it has no UTF-8). Sizes are bounded.
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

_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
"""Every character ``str.splitlines`` splits on (tests/unit/test_schemas.py checks it)."""
_NOT_IN_HEADERS = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]")
_NOT_IN_TEXT = re.compile("[\x00\ud800-\udfff]")


def _refusal(char: str) -> str:
    """Why ``char`` cannot be stored where it was found, in words (never the character)."""
    code = f"U+{ord(char):04X}"
    if char in "\r\n":
        return "must not contain CR or LF (header injection)"
    if char in _LINE_BREAKS:
        return f"must not contain a line or paragraph separator ({code}): a header is one line"
    if "\ud800" <= char <= "\udfff":
        return f"must not contain a lone surrogate ({code}): it is not text and has no encoding"
    if char == "\x00":
        return "must not contain NUL (U+0000)"
    return f"must not contain the control character {code} in a header"


def _header_safe(value: Any) -> Any:
    """One line of encodable text, or ValueError saying what is in the way."""
    if isinstance(value, str) and not (value.isascii() and value.isprintable()):
        found = _NOT_IN_HEADERS.search(value)
        if found:
            raise ValueError(_refusal(found.group()))
    return value


def _text_safe(value: Any) -> Any:
    """Encodable, storable text (no lone surrogate, no NUL), or ValueError."""
    if isinstance(value, str) and not (value.isascii() and "\x00" not in value):
        found = _NOT_IN_TEXT.search(value)
        if found:
            raise ValueError(_refusal(found.group()))
    return value


def _json_safe(value: Any) -> Any:
    """:func:`_text_safe` for every key and string of a JSON value (iteratively: nesting depth
    is not ours to limit here); before type validation, so that no refused key ever reaches an
    error's location."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _text_safe(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


HEADER = BeforeValidator(_header_safe)
"""The check of a header field's value (or of what goes into one: an address, a display name,
a filename). Last in its ``Annotated``, after any ``StringConstraints``: it runs first, and
the constraints keep their own wording."""
TEXT = BeforeValidator(_text_safe)
"""The check of any other text: bodies, notes, keys."""

HeaderText = Annotated[str, HEADER]
Text = Annotated[str, TEXT]
Category = Annotated[str, StringConstraints(max_length=100, pattern=r"^[A-Za-z0-9_.:/-]*$"), HEADER]
Channel = Annotated[str, StringConstraints(max_length=16), HEADER]
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
    filename: Annotated[str, StringConstraints(min_length=1, max_length=255), HEADER]
    content_type: Annotated[
        str, StringConstraints(pattern=r"^[\w.+-]+/[\w.+-]+$", max_length=255), HEADER
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


_CHANNEL = (
    'The channel to send on ("email", the only one configured today); unset: email, or for a '
    "contact the channel it chose for the category."
)


class ContentIn(Strict):
    from_: Annotated[str, StringConstraints(min_length=3, max_length=400), HEADER] = Field(
        alias="from", description='Sender, "addr@example.com" or "Name <addr@example.com>".'
    )
    subject: Annotated[str, StringConstraints(max_length=998), HEADER]
    text: Text | None = None
    html: Text | None = None
    category: Category = ""
    headers: dict[str, HeaderText] = Field(
        default_factory=dict, description="Extra headers such as Reply-To."
    )

    @model_validator(mode="after")
    def _has_body(self) -> ContentIn:
        if self.text is None and self.html is None:
            raise ValueError("give text, html or both")
        return self

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: Any) -> Any:
        """Names first, before their values are validated (an error's location names the
        header: it must be one)."""
        for name in value if isinstance(value, dict) else ():
            if not isinstance(name, str) or not _HEADER_NAME.match(name):
                raise ValueError(f"{name!a} is not a header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"{name} is set by Postwarden")
        return value


class MessageIn(ContentIn):
    to: Annotated[str, StringConstraints(min_length=3, max_length=320), HEADER]
    channel: Channel | None = Field(None, description=_CHANNEL)
    metadata: Annotated[dict[str, str | int | float | bool | None], BeforeValidator(_json_safe)] = (
        Field(default_factory=dict)
    )
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=20)
    idempotency_key: (
        Annotated[str, StringConstraints(min_length=1, max_length=200), TEXT] | None
    ) = None
    track: bool | None = Field(
        None, description="Track opens and clicks; unset: the account's setting."
    )


class _Recipient(TypedDict, total=False):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    email: Annotated[str, StringConstraints(max_length=320), HEADER] | None
    contact_id: int | None
    metadata: Annotated[dict[str, Any], BeforeValidator(_json_safe)] | None


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
    channel: Channel | None = Field(None, description=_CHANNEL)
    track: bool | None = Field(
        None, description="Track opens and clicks; unset: the account's setting."
    )


class ContactIn(Strict):
    name: Annotated[str, StringConstraints(max_length=200), HEADER] = ""
    email: Annotated[str, StringConstraints(max_length=320), HEADER] | None = None
    phone: Annotated[str, StringConstraints(max_length=32), HEADER] | None = None
    preferences: Annotated[dict[str, list[str]], BeforeValidator(_json_safe)] = Field(
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
    address: Annotated[str, StringConstraints(min_length=3, max_length=320), HEADER]
    category: Category = ""
    note: Text = ""


class ResendIn(Strict):
    to: Annotated[str, StringConstraints(min_length=3, max_length=320), HEADER] | None = None


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
