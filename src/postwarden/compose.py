"""Build each outgoing message's bytes once (at its first attempt; retries reuse them).

A broadcast's body is the same for every recipient, so it is encoded once per content and
only the per-recipient headers (To, Message-ID, the Postwarden id) are written per message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from postwarden import clock

TOKEN_HEADER = "X-Postwarden-Id"
"""Carries the message's VERP token, so a bounce that quotes only the headers still matches."""

_POLICY = policy.SMTP.clone(max_line_length=998)


@dataclass(frozen=True, slots=True)
class Content:
    from_addr: str
    from_name: str
    subject: str
    text: str | None
    html: str | None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


def _header_bytes(name: str, value: str) -> bytes:
    if value.isascii() and len(value) < 900 and "\n" not in value and "\r" not in value:
        return f"{name}: {value}\r\n".encode("ascii")  # nothing to encode or fold
    return _POLICY.fold_binary(*_POLICY.header_store_parse(name, value))


def _mailbox(name: str, addr: str) -> str:
    if not name and addr.isascii():
        return addr
    local, _, domain = addr.rpartition("@")
    return str(Address(display_name=name, username=local, domain=domain))


def _content_headers(content: Content) -> bytes:
    return b"".join(
        [
            _header_bytes("From", _mailbox(content.from_name, content.from_addr)),
            _header_bytes("Subject", content.subject),
            *(_header_bytes(k, v) for k, v in content.headers.items()),
        ]
    )


def _body(content: Content, attachments: Sequence[Attachment]) -> EmailMessage:
    part = EmailMessage(policy=_POLICY)
    if content.text is not None:
        part.set_content(content.text)
        if content.html is not None:
            part.add_alternative(content.html, subtype="html")
    else:
        part.set_content(content.html or "", subtype="html")
    for attachment in attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        part.add_attachment(
            attachment.data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment.filename,
        )
    return part


class Composer:
    """Encodes bodies once per content and stamps per-recipient headers on them."""

    def __init__(self) -> None:
        self._common: dict[int, tuple[bytes, bytes]] = {}

    def _common_parts(self, content_id: int, content: Content) -> tuple[bytes, bytes]:
        cached = self._common.get(content_id)
        if cached is None:
            cached = (_content_headers(content), _body(content, ()).as_bytes(policy=_POLICY))
            if len(self._common) > 1024:
                self._common.clear()
            self._common[content_id] = cached
        return cached

    def build(
        self,
        *,
        content_id: int,
        content: Content,
        to: str,
        token: str,
        message_id_domain: str,
        attachments: Sequence[Attachment] = (),
        extra_headers: Sequence[tuple[str, str]] = (),
        html: str | None = None,
        text: str | None = None,
    ) -> bytes:
        """The whole message; ``html`` replaces the content's HTML (tracking rewrites it)."""
        if attachments or html is not None or text is not None:
            variant = content if html is None else _replace_html(content, html)
            if text is not None:  # tracking rewrites plain-text links where configured
                variant = replace(variant, text=text)
            head = _content_headers(content)
            body = _body(variant, attachments).as_bytes(policy=_POLICY)
        else:
            head, body = self._common_parts(content_id, content)
        per_message = b"".join(
            [
                _header_bytes("To", _mailbox("", to)),
                _header_bytes("Date", format_datetime(clock.now())),
                _header_bytes("Message-ID", f"<{token}@{message_id_domain}>"),
                _header_bytes(TOKEN_HEADER, token),
                *(_header_bytes(k, v) for k, v in extra_headers),
            ]
        )
        return head + per_message + body


def _replace_html(content: Content, html: str) -> Content:
    return Content(
        content.from_addr, content.from_name, content.subject, content.text, html, content.headers
    )
