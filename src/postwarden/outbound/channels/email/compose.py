"""Build each outgoing message's bytes once (at its first attempt; retries reuse them).

A broadcast's body is the same for every recipient, so it is encoded once per content and
only the per-recipient headers (To, Message-ID, the Postwarden id) are written per message.
"""

from __future__ import annotations

import random
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from postwarden.domain import clock
from postwarden.domain.verp import TOKEN_HEADER

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


_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
"""What ``str.splitlines`` ends a line at, and so the email package refuses in a header."""


def _header_bytes(name: str, value: str) -> bytes:
    """One header, folded; a ValueError naming the header and the character when it cannot be
    written (the message is then the only one that fails: see the email channel's build)."""
    if value.isascii() and len(value) < 900 and "\n" not in value and "\r" not in value:
        return f"{name}: {value}\r\n".encode("ascii")  # nothing to encode or fold
    try:
        return _POLICY.fold_binary(*_POLICY.header_store_parse(name, value))
    except Exception as exc:
        brk = next((ch for ch in value if ch in _LINE_BREAKS), None)
        if brk is not None:
            what = f"U+{ord(brk):04X} ({unicodedata.name(brk, 'a control character')})"
            raise ValueError(f"the {name} header holds {what}, a line break") from exc
        raise ValueError(f"the {name} header cannot be encoded: {exc}") from exc


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


def _text_part(subtype: str, text: str, mime_version: bool = True) -> bytes | None:
    """One text part exactly as ``EmailMessage.set_content`` writes it when every line fits
    (7bit, or 8bit for UTF-8), without its ~1 ms of parsing its own headers back; None when the
    text needs quoted-printable or base64 (the email package does those)."""
    try:
        lines = text.encode("utf-8").splitlines()
    except UnicodeEncodeError:
        return None
    if any(len(line) > _POLICY.max_line_length for line in lines):
        return None
    cte = "7bit" if text.isascii() else "8bit"
    return b"".join(
        [
            b'Content-Type: text/%s; charset="utf-8"\r\n' % subtype.encode(),
            b"Content-Transfer-Encoding: %s\r\n" % cte.encode(),
            b"MIME-Version: 1.0\r\n" if mime_version else b"",
            b"\r\n",
            b"\r\n".join(lines),
            b"\r\n",
        ]
    )


def _text_body(content: Content) -> bytes | None:
    """The body of a message without attachments, byte for byte what :func:`_body` writes (a
    multipart/alternative boundary of the same form), or None to let :func:`_body` do it."""
    if content.text is None or content.html is None:
        if content.text is not None:
            return _text_part("plain", content.text)
        return _text_part("html", content.html or "")
    text = _text_part("plain", content.text, mime_version=False)
    html = _text_part("html", content.html)
    boundary = b"=" * 15 + b"%019d" % random.randrange(sys.maxsize) + b"=="
    if text is None or html is None or boundary in text or boundary in html:
        return None
    return b"".join(
        [
            b"MIME-Version: 1.0\r\n",
            b'Content-Type: multipart/alternative; boundary="%s"\r\n\r\n' % boundary,
            b"--%s\r\n%s\r\n--%s\r\n%s\r\n--%s--\r\n" % (boundary, text, boundary, html, boundary),
        ]
    )


def _body_bytes(content: Content, attachments: Sequence[Attachment] = ()) -> bytes:
    fast = None if attachments else _text_body(content)
    return fast if fast is not None else _body(content, attachments).as_bytes(policy=_POLICY)


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
        self._date: tuple[datetime | None, bytes] = (None, b"")

    def _date_header(self) -> bytes:
        """The Date header, formatted once per second (it has no finer resolution)."""
        now = clock.now().replace(microsecond=0)
        if now != self._date[0]:
            self._date = (now, _header_bytes("Date", format_datetime(now)))
        return self._date[1]

    def _common_parts(self, content_id: int, content: Content) -> tuple[bytes, bytes]:
        cached = self._common.get(content_id)
        if cached is None:
            cached = (_content_headers(content), _body_bytes(content))
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
            body = _body_bytes(variant, attachments)
        else:
            head, body = self._common_parts(content_id, content)
        per_message = b"".join(
            [
                _header_bytes("To", _mailbox("", to)),
                self._date_header(),
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
