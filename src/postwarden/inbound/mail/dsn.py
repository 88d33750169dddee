"""Parse one raw mail (bytes) into a delivery report. Pure: no I/O except parse_bounce_lines.

Understands RFC 3464 delivery status notifications (bounce, delay, success), RFC 5965 ARF
complaints, Amazon SES JSON notifications, RFC 3834 auto-replies, and the non-standard
plain-text bounces of Exim, qmail, Sendmail, Postfix, Exchange, Gmail, Yahoo, Lotus and others
(a recipient address followed by the remote server's words).
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.errors import HeaderParseError, MissingHeaderBodySeparatorDefect
from email.header import decode_header
from email.message import Message
from email.parser import Parser
from email.policy import compat32
from enum import StrEnum
from types import MappingProxyType

from postwarden.domain.classify import (
    Verdict,
    classify,
    extract_reply_code,
    extract_status,
    smtp_command,
)
from postwarden.inbound.mail.feedparser_compat import message_from_bytes as _message_from_bytes

__all__ = ["Kind", "Recipient", "Report", "parse", "parse_bounce_lines", "split_mbox"]


class Kind(StrEnum):
    BOUNCE = "bounce"
    DELAY = "delay"
    SUCCESS = "success"
    COMPLAINT = "complaint"
    AUTOREPLY = "autoreply"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    original: str | None
    kind: Kind
    status: str | None
    reply_code: int | None
    diagnostic: str
    remote_mta: str | None
    verdict: Verdict | None


_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Report:
    kind: Kind
    recipients: tuple[Recipient, ...]
    envelope_to: tuple[str, ...] = ()
    original_message_id: str | None = None
    returned_headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    feedback_type: str | None = None
    subject: str = ""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
_ADDR_CHARS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]"
_ADDR_RE = re.compile(
    r"(?<![\w.+\-=])"
    rf"(\"[^\"\r\n]{{1,64}}\"|{_ADDR_CHARS}{{1,128}})"
    r"@([A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}"
    r"[A-Za-z0-9])?)+|\[[0-9.:A-Fa-f]+\])"
)
_SPACE_RE = re.compile(r"[ \t]+")
_WS_RE = re.compile(r"\s+")
_MBOX_SEP_RE = re.compile(rb"(?m)^From [^\r\n]*\r?\n")
_BOUNCE_FROM_RE = re.compile(
    r"mailer-daemon|post_?master|mail delivery|maildelivery|mail-daemon|mailer daemon|"
    r"mdaemon|bounce|noreply-dsn|nobody@|system administrator|delivery subsystem|"
    r"mail administrator|returned mail|daemon@",
    re.I,
)
_BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|undelivered|delivery (?:status|failure|failed|has failed|notification|problem)|"
    r"failure notice|failed delivery|returned mail|returned to sender|mail delivery|"
    r"could not be delivered|delivery report|non[- ]?delivery|nondeliverable|not delivered|"
    r"rejected|bounce|mail system error|warning: could not|permanent error|"
    r"delayed mail|unzustellbar|non remis|error sending|failed: |failure|"
    r"message you sent|error|unable to deliver|mensaje no entregado|returned",
    re.I,
)
_AUTOREPLY_SUBJECT_RE = re.compile(
    r"out of (?:the )?office|auto(?:matic)?[- ]?(?:reply|response|answer)|vacation|"
    r"away (?:from|until)|abwesen|absence|abwesenheit|r[ée]ponse automatique|"
    r"respuesta autom|risposta automatica|i am away|i'm away|on leave|autoreply|"
    r"自動応答|不在",
    re.I,
)
_AUTOREPLY_BODY_RE = re.compile(
    r"out of (?:the )?office|i am (?:currently )?(?:away|out of)|i'm (?:currently )?(?:away|out)|"
    r"on vacation|on holiday|on leave|auto(?:matic)?[- ]?reply|will be back|limited access to",
    re.I,
)


def _decode_header(value: object) -> str:
    if value is None:
        return ""
    text = str(value)
    if "=?" not in text:
        return _WS_RE.sub(" ", text).strip()
    try:
        chunks = decode_header(text)
    except (ValueError, HeaderParseError):  # binascii.Error is a ValueError
        return _WS_RE.sub(" ", text).strip()
    # Chunk by chunk rather than make_header(): it adds a space between an encoded word and
    # the plain text after it ("=?utf-8?b?...?=. More" must stay "... . More"), and a chunk in
    # an unknown or lying charset must not lose the others.
    decoded = "".join(_bytes_to_str(c, cs) if isinstance(c, bytes) else c for c, cs in chunks)
    return _WS_RE.sub(" ", decoded).strip()


def _bytes_to_str(data: bytes, charset: str | None) -> str:
    if charset:
        try:
            return data.decode(charset, "replace")
        except (LookupError, ValueError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# --------------------------------------------------------------------------------------------
# MIME: the standard library's parser (compat32 policy: the fast one, and forgiving: defects are
# recorded, never raised; see feedparser_compat). Only the parts a report needs are decoded.
# Whatever is parsed again is taken from the bytes: compat32's get_payload() turns each 8-bit
# byte into U+FFFD, which cannot go back to bytes.
# --------------------------------------------------------------------------------------------
_HEADER_PARSER = Parser(policy=compat32)


_MAX_DEPTH = 12
_MAX_BYTES = 65536
READ_BYTES = 2 * _MAX_BYTES
"""The most of a mail :func:`parse` can use (what it keeps after a long mbox ``From`` line):
callers read no more, so a batch of mails of the maximum size costs no more memory."""
_MAX_PARTS = 200  # MIME parts looked at in one mail
_MAX_TEXT = 200_000  # characters of one text part kept for scanning
_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_RETURNED_TYPES = frozenset({"message/rfc822", "message/global"})
_HEADERS_TYPES = frozenset({"text/rfc822-headers", "text/global-headers", "message/rfc822-headers"})

Block = list[tuple[str, str]]


def _header_text(value: object) -> str:
    """A raw header value as text: 8-bit bytes (kept by the parser as surrogate escapes) read as
    UTF-8, folding undone."""
    text = value if isinstance(value, str) else str(value)
    if not text.isascii():
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if "\n" in text:
        return " ".join(text.split())
    return text.strip()


def _items(message: Message) -> Block:
    """The header fields of a message, in order: (lowercased name, text value)."""
    return [(str(k).strip().lower(), _header_text(v)) for k, v in message.raw_items()]


class _Msg:
    """Header access over one parsed message, with plain-text values."""

    __slots__ = ("message", "names", "values")

    def __init__(self, message: Message) -> None:
        self.message = message
        raw = list(message.raw_items())
        self.names = [str(k).strip().lower() for k, _ in raw]
        self.values = [v for _, v in raw]  # made plain text only when asked for

    def get(self, name: str, default: str = "") -> str:
        name = name.lower()
        for i, key in enumerate(self.names):
            if key == name:
                return _header_text(self.values[i])
        return default

    def has(self, name: str) -> bool:
        return name.lower() in self.names

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [_header_text(self.values[i]) for i, key in enumerate(self.names) if key == name]


def _part_text(part: Message) -> str:
    """The decoded body of a leaf part as text (transfer encoding and charset undone)."""
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    text = _bytes_to_str(data[: _MAX_TEXT * 2], part.get_content_charset())
    return text[:_MAX_TEXT]


def _body_blocks(message: Message) -> list[Block]:
    """Field blocks of a message/* part the parser has read as header blocks (delivery-status,
    feedback-report): each sub-message's fields, then any lines the parser left in its body
    (fields after a malformed line, or the later groups of a global-delivery-status)."""
    blocks: list[Block] = []
    payload = message.get_payload()
    if isinstance(payload, str):
        return _field_blocks(_bytes_to_str(_raw_payload(message), None))
    for sub in payload:
        if not isinstance(sub, Message):
            continue
        block = _items(sub)
        rest = _utf8(_raw_body(sub)) if not sub.is_multipart() else ""
        more = _field_blocks(rest)
        if more and rest[:1] not in ("\r", "\n"):  # the parser stopped inside this block
            block.extend(more.pop(0))
        if block:
            blocks.append(block)
        blocks.extend(more)
    return blocks


def _raw_payload(part: Message) -> bytes:
    """A leaf part's body as bytes, its transfer encoding undone."""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


_IDENTITY_CTE = frozenset({"", "7bit", "8bit", "binary"})


def _raw_body(part: Message) -> bytes:
    """A leaf part's body as the bytes that came in (its transfer encoding not undone), to be
    parsed again. A body declared base64 or quoted-printable should hold only ASCII: any 8-bit
    byte in it is lost (as U+FFFD), the rest kept."""
    if str(part.get("Content-Transfer-Encoding", "")).strip().lower() in _IDENTITY_CTE:
        return _raw_payload(part)  # the identity encodings: the bytes as received
    payload = part.get_payload()
    return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""


def _utf8(data: bytes) -> str:
    """Bytes as text: UTF-8, an invalid sequence as U+FFFD (one byte, not the text, lost)."""
    return data.decode("utf-8", "replace")


_NOT_BASE64_RE = re.compile(rb"[^A-Za-z0-9+/=]")


def _encoded_inner(part: Message) -> Message | None:
    """A message/* part sent with base64 or quoted-printable (not allowed, but seen): the
    parser read the encoded text as a message; decode it and parse again."""
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if isinstance(inner, Message):
        if inner.is_multipart():
            return None
        data = _raw_body(inner)
    elif isinstance(payload, str):
        data = _raw_body(part)
    else:
        return None
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    try:
        if cte == "base64":
            data = binascii.a2b_base64(_NOT_BASE64_RE.sub(b"", data) + b"==")
        else:
            data = binascii.a2b_qp(data)
    except (binascii.Error, ValueError):
        return None
    return _message_from_bytes(data.lstrip(b"\r\n"))


def _unsplit_multipart(part: Message) -> list[Message]:
    """A multipart whose declared boundary is missing or absent from the body: split it at the
    delimiter lines actually present."""
    body = _raw_payload(part)
    m = _BOUNDARY_LINE_RE.search(body)
    if not m:
        return []
    bnd = m.group(1).replace(b'"', b"")
    head = b'Content-Type: multipart/mixed; boundary="' + bnd + b'"\n\n'
    outer = _message_from_bytes(head + body)
    payload = outer.get_payload()
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []


_BOUNDARY_LINE_RE = re.compile(rb"(?m)^--([^\s]{1,200}?)(?:--)?[ \t]*\r?$")


def _clean_address(value: str) -> str | None:
    """addr-spec from "rfc822; <Foo@Example.COM>" etc., domain lowercased."""
    if not value:
        return None
    value = _WS_RE.sub(" ", value).strip()  # RFC 2047 does not apply inside an addr-spec
    if ";" in value:
        value = value.split(";", 1)[1]
    value = value.strip().strip("<>").strip()
    m = _ADDR_RE.search(value)
    if m:
        local, domain = m.group(1), m.group(2)
        return f"{local}@{domain.lower()}"
    value = value.strip("<>\"' ")
    return value or None


def _addr(local: str, domain: str) -> str:
    return f"{local}@{domain.lower()}"


# --------------------------------------------------------------------------------------------
# Header blocks and field lists
# --------------------------------------------------------------------------------------------
def _field_blocks(text: str) -> list[list[tuple[str, str]]]:
    """Unfold "Name: value" lines into blocks separated by blank lines."""
    blocks: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = []
            continue
        if line[0] in " \t" and current:
            name, value = current[-1]
            current[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if sep and name and " " not in name.strip() and len(name) < 40:
            current.append((name.strip().lower(), value.strip()))
    if current:
        blocks.append(current)
    return blocks


_RCPT_FIELDS = frozenset(
    {
        "original-recipient",
        "final-recipient",
        "action",
        "status",
        "remote-mta",
        "diagnostic-code",
        "last-attempt-date",
        "will-retry-until",
        "x-actual-recipient",
        "final-log-id",
        "x-supplementary-info",
        "x-display-name",
    }
)


def _recipient_groups(text: str) -> list[dict[str, str]]:
    """Per-recipient field groups of a delivery-status given as text."""
    return _groups_from_blocks(_field_blocks(text))


def _groups_from_blocks(blocks: list[Block]) -> list[dict[str, str]]:
    """Per-recipient field groups from the field blocks of a delivery-status (tolerates missing
    blank lines between groups: a repeated field starts the next group)."""
    groups: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for block in blocks:
        if current.get("final-recipient") or current.get("original-recipient"):
            groups.append(current)
        current = {}
        for i, (name, value) in enumerate(block):
            if name not in _RCPT_FIELDS:
                continue
            if name in current or (
                name == "original-recipient"
                and ("action" in current or "status" in current)
                and _final_follows(block, i + 1)
            ):
                if current.get("final-recipient") or current.get("original-recipient"):
                    groups.append(current)
                current = {}
            current[name] = value
    if current.get("final-recipient") or current.get("original-recipient"):
        groups.append(current)
    return groups


def _final_follows(block: list[tuple[str, str]], start: int) -> bool:
    """Whether a Final-Recipient comes next (before the fields that end a group)."""
    for name, _ in block[start:]:
        if name == "final-recipient":
            return True
        if name in ("action", "status", "diagnostic-code"):
            return False
    return False


def _headers_from_text(text: str) -> dict[str, str]:
    """Headers of a returned original given as text; starts at the first header-like line."""
    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines[:400]):
        if _HEADER_LINE_RE.match(line):
            start = i
            break
    if start is None:
        return {}
    chunk_lines = []
    for line in lines[start : start + 400]:
        if not line.strip():
            break  # the end of the header block: the body is not needed
        chunk_lines.append(line)
    chunk = "\n".join(chunk_lines)
    return _header_map(_HEADER_PARSER.parsestr(chunk, headersonly=True))


_HEADER_LINE_RE = re.compile(
    r"^(?:Return-Path|Received|Message-I[dD]|From|To|Subject|Date|DKIM-Signature|MIME-Version|"
    r"Content-Type|X-[\w\-]+|Reply-To|Delivered-To|Authentication-Results|Cc):",
    re.I,
)


def _header_map(message: Message) -> dict[str, str]:
    """Decoded headers of a (returned) message, first occurrence of each name. Where the parser
    stopped at a line that is not a header (a folded line that lost its indentation, common in
    returned copies), the "Name: value" lines up to the blank line are read as well."""
    out: dict[str, str] = {}
    for key, value in _items(message):
        if key not in out:
            out[key] = _decode_header(value) if "=?" in value else value
    if any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in message.defects):
        if not message.is_multipart():
            blocks = _field_blocks(_utf8(_raw_body(message)[:20_000]))
            for key, value in blocks[0] if blocks else ():
                if key not in out:
                    out[key] = _decode_header(value)
    return out


_ANGLED_RE = re.compile(r"<([^<>\s]+)>")


def _message_id(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    m = _ANGLED_RE.search(value)
    if m:
        return m.group(1)
    return value.strip("<> ") or None


# --------------------------------------------------------------------------------------------
# Walking the MIME tree
# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Parts:
    delivery_status: list[Block] = field(default_factory=list)
    feedback: list[Block] = field(default_factory=list)
    returned: list[dict[str, str]] = field(default_factory=list)
    returned_msgs: list[Message] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    htmls: list[str] = field(default_factory=list)
    seen: int = 0


def _walk(part: Message, parts: _Parts, depth: int = 0) -> None:
    parts.seen += 1
    if parts.seen > _MAX_PARTS or depth > _MAX_DEPTH:
        return
    ctype = part.get_content_type()
    maintype = ctype.partition("/")[0]
    if maintype == "multipart":
        payload = part.get_payload()
        subs = payload if isinstance(payload, list) else _unsplit_multipart(part)
        if subs:
            for sub in subs:
                if isinstance(sub, Message):
                    _walk(sub, parts, depth + 1)
        else:  # multipart without a usable boundary: keep it as text
            parts.texts.append(_part_text(part))
        return
    if ctype in _RETURNED_TYPES:
        inner: Message | None = None
        if str(part.get("Content-Transfer-Encoding", "")).strip().lower() in (
            "base64",
            "quoted-printable",
        ):
            inner = _encoded_inner(part)
        else:
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                inner = payload[0]
                body = inner.get_payload()
                if not inner.keys() and isinstance(body, str) and body.strip():
                    # blank lines before the returned message's headers: parse it again,
                    # from its bytes (8-bit text is common: Postwarden itself sends 8bit)
                    inner = _message_from_bytes(_raw_body(inner).lstrip(b"\r\n"))
        if inner is not None and (inner.keys() or inner.get_payload()):
            parts.returned.append(_header_map(inner))
            parts.returned_msgs.append(inner)
        return
    if ctype in _DSN_TYPES:
        parts.delivery_status.extend(_body_blocks(part))
    elif ctype == "message/feedback-report":
        parts.feedback.extend(_body_blocks(part))
    elif ctype in _HEADERS_TYPES:
        text = _part_text(part) if not part.is_multipart() else ""
        if not text and part.is_multipart():  # message/rfc822-headers read as a message
            payload = part.get_payload()
            if payload and isinstance(payload[0], Message):
                parts.returned.append(_header_map(payload[0]))
            return
        parts.returned.append(_headers_from_text(text))
    elif part.is_multipart():
        return  # another message/* type: nothing to read
    elif ctype == "text/html":
        parts.htmls.append(_part_text(part))
    elif maintype == "text" or ctype == "application/json":
        parts.texts.append(_part_text(part))


_TAG_RE = re.compile(r"<(?:br|p|div|tr|li|/p|/div|/tr|/li|/h\d)[^>]*>", re.I)
_ANYTAG_RE = re.compile(r"<[^>]+>")
_ENTITY = {"&lt;": "<", "&gt;": ">", "&amp;": "&", "&nbsp;": " ", "&quot;": '"', "&#39;": "'"}
_ENTITY_RE = re.compile("|".join(_ENTITY))


def _html_to_text(html: str) -> str:
    text = _TAG_RE.sub("\n", html)
    text = _ANYTAG_RE.sub("", text)
    return _ENTITY_RE.sub(lambda m: _ENTITY[m.group(0)], text)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
_HEADER_START_RE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")


def split_mbox(raw: bytes) -> list[bytes]:
    """Split an mbox (messages introduced by "From " lines) into messages; a single message,
    with or without a leading "From " line, is returned as a one-element list."""
    if not raw.startswith(b"From "):
        return [raw]
    pieces = [p for p in _MBOX_SEP_RE.split(raw) if p.strip()]
    # A "From " line inside a body is escaped by writers; still, only keep pieces that look
    # like messages (have a header line), and glue the others to their predecessor.
    out: list[bytes] = []
    for piece in pieces:
        head = piece[:2000]
        if out and not _HEADER_START_RE.match(head):
            out[-1] += b"From " + piece
        else:
            out.append(piece)
    return out or [raw]


def parse(raw: bytes) -> Report:
    """Parse one mail. Malformed input gives Kind.UNKNOWN with no recipients; a fault of the
    parser raises, so that its caller records it (a silent "unknown" would hide a lost
    bounce)."""
    return _parse(raw)


def parse_bounce_lines(path: str) -> list[dict]:
    """What `postwarden parse-bounce FILE` prints: one dict per recipient."""
    with open(path, "rb") as fh:
        raw = fh.read()
    lines: list[dict] = []
    for piece in split_mbox(raw):
        try:
            report = parse(piece)
        except Exception as exc:
            lines.append({"file": path, "kind": "error", "error": f"{type(exc).__name__}: {exc}"})
            continue
        if not report.recipients or report.kind in (Kind.AUTOREPLY, Kind.UNKNOWN):
            lines.append(
                {
                    "file": path,
                    "recipient": None,
                    "status": None,
                    "reason": None,
                    "hard": None,
                    "kind": str(report.kind if report.kind != Kind.BOUNCE else Kind.UNKNOWN),
                }
            )
            continue
        for r in report.recipients:
            v = r.verdict
            lines.append(
                {
                    "file": path,
                    "recipient": r.address,
                    "status": r.status,
                    "reason": v.reason if v else None,
                    "hard": v.hard if v else None,
                    "kind": str(r.kind),
                }
            )
    return lines


def _parse(raw: bytes, depth: int = 0) -> Report:
    if raw.startswith(b"From "):
        nl = raw.find(b"\n")
        raw = raw[nl + 1 :] if nl >= 0 else b""
    if len(raw) > _MAX_BYTES:
        raw = raw[: raw.rfind(b"\n", 0, _MAX_BYTES) + 1 or _MAX_BYTES]
    return _parse_message(_message_from_bytes(raw), depth)


def _parse_message(message: Message, depth: int = 0) -> Report:
    msg = _Msg(message)
    subject = _decode_header(msg.get("Subject"))
    parts = _Parts()
    _walk(message, parts)
    returned = _merge_returned(parts.returned)
    ctx = _Context(msg, subject, parts, returned)

    if parts.feedback or _is_jmrp(ctx):
        return _complaint(ctx)
    if msg.get("X-Apple-Unsubscribe", "").strip().lower() == "true":
        return _unsubscribe(ctx)
    if parts.delivery_status:
        report = _from_dsn(ctx)
        if report is not None:
            return report
    body = "\n".join(parts.texts) or "\n".join(_html_to_text(h) for h in parts.htmls)
    ctx.body = body
    ses = _from_ses(ctx)
    if ses is not None:
        return ses
    if _looks_like_autoreply(ctx):
        return ctx.report(Kind.AUTOREPLY, ())
    if "final-recipient:" in body.lower():
        report = _from_dsn_text(ctx, body)
        if report is not None:
            return report
    if _looks_like_bounce(ctx):
        report = _from_plain(ctx)
        if report.recipients:
            return report
    inner = _inner_bounce(ctx, depth)
    if inner is not None:
        return inner
    return ctx.report(Kind.UNKNOWN, ())


def _inner_bounce(ctx: _Context, depth: int) -> Report | None:
    """A bounce forwarded as an attachment (message/rfc822 holding a DSN)."""
    if depth > 2:
        return None
    for sub in ctx.parts.returned_msgs:
        sender = _header_text(sub.get("From", ""))
        if sub.get_content_type() == "multipart/report" or _BOUNCE_FROM_RE.search(sender):
            report = _parse_message(sub, depth + 1)
            if report.recipients and report.kind != Kind.AUTOREPLY:
                return report
    return None


@dataclass(slots=True)
class _Context:
    msg: _Msg
    subject: str
    parts: _Parts
    returned: dict[str, str]
    body: str = ""

    def report(
        self,
        kind: Kind,
        recipients: tuple[Recipient, ...],
        feedback_type: str | None = None,
        returned: dict[str, str] | None = None,
    ) -> Report:
        headers = returned if returned is not None else self.returned
        return Report(
            kind=kind,
            recipients=recipients,
            original_message_id=_message_id(headers.get("message-id")),
            returned_headers=MappingProxyType(dict(headers)),
            feedback_type=feedback_type,
            subject=self.subject,
        )


def _merge_returned(blocks: list[dict[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for block in blocks:
        for k, v in block.items():
            out.setdefault(k, v)
    return out


# ---- ARF complaints --------------------------------------------------------------------------
def _complaint(ctx: _Context) -> Report:
    fields: dict[str, str] = {}
    for block in ctx.parts.feedback:
        for name, value in block:
            fields.setdefault(name, value)
    rcpt = _clean_address(fields.get("original-rcpt-to", "")) or _clean_address(
        ctx.returned.get("x-hmxmroriginalrecipient", "")
    )
    if not rcpt:
        to = ctx.returned.get("to", "")
        m = _ADDR_RE.search(to)
        rcpt = _addr(m.group(1), m.group(2)) if m else None
    ftype = (fields.get("feedback-type") or "").strip().lower() or "abuse"
    recipients: tuple[Recipient, ...] = ()
    if rcpt:
        recipients = (Recipient(rcpt, None, Kind.COMPLAINT, None, None, "", None, None),)
    return ctx.report(Kind.COMPLAINT, recipients, feedback_type=ftype)


def _is_jmrp(ctx: _Context) -> bool:
    """Microsoft's junk mail reporting program: the reported message, with its original
    recipient in X-HmXmrOriginalRecipient, without an ARF part."""
    return "x-hmxmroriginalrecipient" in ctx.returned or (
        "complaint about message from" in ctx.subject.lower() and bool(ctx.parts.returned)
    )


def _unsubscribe(ctx: _Context) -> Report:
    """Apple Mail's "unsubscribe" mail: the sender of this mail asks to stop receiving mail."""
    m = _ADDR_RE.search(_decode_header(ctx.msg.get("From", "")))
    recipients: tuple[Recipient, ...] = ()
    if m:
        addr = _addr(m.group(1), m.group(2))
        recipients = (Recipient(addr, None, Kind.COMPLAINT, None, None, "", None, None),)
    return ctx.report(Kind.COMPLAINT, recipients, feedback_type="opt-out")


# ---- RFC 3464 ---------------------------------------------------------------------------------
_ACTION_KIND = {
    "failed": Kind.BOUNCE,
    "failure": Kind.BOUNCE,
    "delayed": Kind.DELAY,
    "delivered": Kind.SUCCESS,
    "relayed": Kind.SUCCESS,
    "expanded": Kind.SUCCESS,
    "deliverable": Kind.SUCCESS,
}
_TYPE_PREFIX_RE = re.compile(r"^\s*[\w\-]{1,20}\s*;\s*")
_DIAG_PREFIX_RE = re.compile(r"^\s*(?:smtp|x-[\w\-]+|x400|unix|mail)\s*;\s*", re.I)


def _from_dsn(ctx: _Context) -> Report | None:
    groups: list[dict[str, str]] = []
    groups.extend(_groups_from_blocks(ctx.parts.delivery_status))
    if not groups:
        # A delivery-status with its per-message fields only (no recipient group): the failed
        # recipient is the one the returned message was addressed to, when there is just one.
        to = _ADDR_RE.findall(" ".join(ctx.returned.get(h, "") for h in ("to", "cc")))
        if len(to) != 1:
            return None
        groups = [{"final-recipient": f"rfc822; {_addr(*to[0])}"}]
    human = "\n".join(ctx.parts.texts) or "\n".join(_html_to_text(h) for h in ctx.parts.htmls)
    return _report_from_groups(ctx, groups, human)


def _from_dsn_text(ctx: _Context, body: str) -> Report | None:
    start = body.lower().find("final-recipient:")
    region = body[max(0, start - 2000) :]
    groups = _recipient_groups(region)
    if not groups:
        return None
    return _report_from_groups(ctx, groups, body[:start])


_MAX_DSN_RECIPIENTS = 1000


def _report_from_groups(ctx: _Context, groups: list[dict[str, str]], human: str) -> Report:
    recipients: list[Recipient] = []
    human_region = _cut_returned(human)
    for g in groups[:_MAX_DSN_RECIPIENTS]:
        final = _clean_address(g.get("final-recipient", "")) or _clean_address(
            g.get("original-recipient", "")
        )
        if not final:
            continue
        if "@" not in final:  # a file or pipe destination (Exim): the address that led there
            alt = _generated_by(ctx, human_region, final)
            if alt:
                final = alt
        elif final.startswith("@"):  # no local part: the address the report names instead
            alt = _address_for_domain(ctx, human_region, final[1:])
            if alt:
                final = alt
        original = _clean_address(g.get("original-recipient", "")) or _clean_address(
            g.get("x-actual-recipient", "")
        )
        if original and original.lower() == final.lower():
            original = None
        status = _norm_status(g.get("status", ""))
        action = (g.get("action") or "").strip().lower().split(" ")[0]
        kind = _ACTION_KIND.get(action)
        if kind is None:
            if status and status[0] == "2":
                kind = Kind.SUCCESS
            elif status and status[0] == "4":
                kind = Kind.DELAY if "delay" in action else Kind.BOUNCE
            else:
                kind = Kind.BOUNCE
        raw_diag = g.get("diagnostic-code", "")
        diag_type = ""
        m = _DIAG_PREFIX_RE.match(raw_diag)
        if m:
            diag_type = m.group(0).strip().rstrip(";").strip().lower()
            raw_diag = raw_diag[m.end() :]
        diag = _SPACE_RE.sub(" ", raw_diag).strip()
        relayed = _RELAYED_REPLY_RE.match(diag)
        if relayed:  # "5.1.0 - Unknown address error 550-'5.7.1 ...'": the remote's own words
            diag = diag[relayed.end() :]
        context = _snippet_for(human_region, final, original)
        remote = g.get("remote-mta")
        remote_mta = _TYPE_PREFIX_RE.sub("", remote).strip() or None if remote else None
        reply = extract_reply_code(diag)
        diag_status = extract_status(diag)
        if not diag_status and context:
            diag_status = extract_status(context)
        if (
            status
            and diag_status
            and diag_status[0] == status[0]
            and (status.endswith(".0.0") or status[2:] == "4.7")
        ):
            status = diag_status
        if not status:
            status = diag_status
        verdict = None
        if kind in (Kind.BOUNCE, Kind.DELAY):
            text = diag
            if context and (not diag or _weak(diag)):
                text = f"{diag}\n{context}" if diag else context
            elif context and len(diag) >= 60 and not diag.endswith((".", ")", "]", ">")):
                # A Diagnostic-Code cut short (lost continuation lines): the human-readable part
                # usually has the rest of the server's words.
                tail = context.find(diag[-30:])
                if tail >= 0:
                    text = f"{diag} {context[tail + 30 : tail + 330]}"
            if diag_type.startswith("x-unix") and "x-unix" not in text.lower():
                text = f"x-unix; {text}"
            command = smtp_command(diag.lower()) or smtp_command(context.lower())
            verdict = classify(
                text, status=status, reply_code=reply, command=command, remote_host=remote_mta
            )
            if kind is Kind.DELAY and verdict.reason in ("onhold", "undefined"):
                verdict = classify("delivery delayed", status=None)
        recipients.append(
            Recipient(final, original, kind, status, reply, diag or context, remote_mta, verdict)
        )
    return ctx.report(_overall(recipients), tuple(recipients))


def _address_for_domain(ctx: _Context, human: str, host: str) -> str | None:
    """A complete address for a Final-Recipient that lost its local part: the one address of
    that domain (or of a parent domain of that host) in the human-readable part or in the
    returned message's recipients."""
    sources = (human, " ".join(ctx.returned.get(h, "") for h in ("to", "cc")))
    for text in sources:
        found = {
            _addr(m.group(1), m.group(2))
            for m in _ADDR_RE.finditer(text)
            if host.lower() == m.group(2).lower() or host.lower().endswith("." + m.group(2).lower())
        }
        if len(found) == 1:
            return found.pop()
    return None


_GENERATED_BY_RE = re.compile(r"generated by\s+<?([^\s<>]+@[^\s<>]+)", re.I)


def _generated_by(ctx: _Context, human: str, destination: str) -> str | None:
    low = human.lower()
    pos = low.find(destination.lower())
    if pos >= 0:
        m = _GENERATED_BY_RE.search(human, pos, pos + 600)
        if m:
            return _clean_address(m.group(1))
    for v in ctx.msg.get_all("X-Failed-Recipients"):
        addr = _clean_address(v.split(",")[0])
        if addr and "@" in addr:
            return addr
    return None


# A relay's own category before the remote server's reply (Amazon SES and others).
_RELAYED_REPLY_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3} - [A-Za-z ]{3,60} (?=[245]\d\d[ \-])")


def _weak(diag: str) -> bool:
    """A diagnostic with only codes or boilerplate: read the human-readable part as well."""
    return _SIX_LETTERS_RE.search(diag) is None


_SIX_LETTERS_RE = re.compile(r"(?:[^\W\d_][\W\d_]*){6}")


def _norm_status(value: str) -> str | None:
    return extract_status(value) if value else None


def _overall(recipients: list[Recipient]) -> Kind:
    kinds = {r.kind for r in recipients}
    for k in (Kind.BOUNCE, Kind.DELAY, Kind.COMPLAINT, Kind.SUCCESS):
        if k in kinds:
            return k
    return Kind.UNKNOWN


# ---- Amazon SES JSON --------------------------------------------------------------------------
_NEWLINE_RE = re.compile(r"\r?\n")


def _loads_wrapped(text: str) -> object:
    """JSON that may have been wrapped at a fixed line length (newlines cannot occur inside
    JSON strings, so removing them restores it)."""
    for candidate in (_NEWLINE_RE.sub("", text), text):
        try:
            return json.loads(candidate, strict=False)
        except ValueError:
            continue
    return None


def _from_ses(ctx: _Context) -> Report | None:
    body = ctx.body
    flat = body.replace("\r", "").replace("\n", "")  # notifications may be wrapped
    if "notificationType" not in flat and "eventType" not in flat:
        return None
    start = body.find("{")
    end = body.rfind("}")
    if start < 0 or end <= start:
        return None
    data = _loads_wrapped(body[start : end + 1])
    if isinstance(data, dict) and isinstance(data.get("Message"), str):
        data = _loads_wrapped(data["Message"])  # an SNS envelope: the notification inside
    if not isinstance(data, dict):
        return None
    ntype = str(data.get("notificationType") or data.get("eventType") or "").lower()
    mail = data.get("mail") if isinstance(data.get("mail"), dict) else {}
    returned: dict[str, str] = {}
    for h in mail.get("headers") or []:
        if isinstance(h, dict) and "name" in h:
            returned.setdefault(str(h["name"]).lower(), str(h.get("value", "")))
    if "messageId" in mail and "message-id" not in returned:
        returned["x-ses-message-id"] = str(mail["messageId"])
    recipients: list[Recipient] = []
    if ntype == "bounce":
        b = data.get("bounce") or {}
        btype = str(b.get("bounceType", ""))
        for r in b.get("bouncedRecipients") or []:
            addr = _clean_address(str(r.get("emailAddress", "")))
            if not addr:
                continue
            diag = str(r.get("diagnosticCode") or "")
            diag = _DIAG_PREFIX_RE.sub("", diag).strip()
            status = _norm_status(str(r.get("status") or "")) or extract_status(diag)
            reply = extract_reply_code(diag)
            text = diag or f"{btype} {b.get('bounceSubType', '')}"
            kind = Kind.BOUNCE
            verdict = classify(text, status=status, reply_code=reply)
            recipients.append(
                Recipient(addr, None, kind, status, reply, diag, r.get("remoteMtaIp"), verdict)
            )
        return ctx.report(_overall(recipients), tuple(recipients), returned=returned)
    if ntype == "complaint":
        c = data.get("complaint") or {}
        ftype = c.get("complaintFeedbackType")
        for r in c.get("complainedRecipients") or []:
            addr = _clean_address(str(r.get("emailAddress", "")))
            if addr:
                recipients.append(Recipient(addr, None, Kind.COMPLAINT, None, None, "", None, None))
        return ctx.report(
            Kind.COMPLAINT,
            tuple(recipients),
            feedback_type=str(ftype).lower() if ftype else "abuse",
            returned=returned,
        )
    if ntype == "delivery":
        d = data.get("delivery") or {}
        diag = str(d.get("smtpResponse") or "")
        for a in d.get("recipients") or []:
            addr = _clean_address(str(a))
            if addr:
                recipients.append(
                    Recipient(
                        addr,
                        None,
                        Kind.SUCCESS,
                        extract_status(diag),
                        extract_reply_code(diag),
                        diag,
                        d.get("remoteMtaIp"),
                        None,
                    )
                )
        return ctx.report(Kind.SUCCESS, tuple(recipients), returned=returned)
    return None


# ---- auto-replies -----------------------------------------------------------------------------
def _looks_like_autoreply(ctx: _Context) -> bool:
    msg = ctx.msg
    sender = f"{msg.get('From', '')} {msg.get('Return-Path', '')}"
    if (_BOUNCE_FROM_RE.search(sender) or msg.get("X-Failed-Recipients")) and (
        _BOUNCE_SUBJECT_RE.search(ctx.subject) or _DELAY_RE.search(ctx.subject)
    ):
        return False
    auto = str(msg.get("Auto-Submitted", "")).strip().lower()
    prec = str(msg.get("Precedence", "")).strip().lower()
    if (
        auto.startswith("auto-replied")
        or msg.has("X-Autoreply")
        or msg.has("X-Autorespond")
        or prec == "auto_reply"
        or (
            str(msg.get("X-Auto-Response-Suppress", "")).lower() == "all"
            and _AUTOREPLY_SUBJECT_RE.search(ctx.subject)
        )
    ):
        return not _BOUNCE_SUBJECT_RE.search(ctx.subject) or bool(
            _AUTOREPLY_SUBJECT_RE.search(ctx.subject)
        )
    if _AUTOREPLY_SUBJECT_RE.search(ctx.subject):
        return True
    return bool(auto and auto != "no" and _AUTOREPLY_BODY_RE.search(ctx.body[:2000]))


# ---- non-standard bounces ---------------------------------------------------------------------
def _looks_like_bounce(ctx: _Context) -> bool:
    msg = ctx.msg
    if msg.get("X-Failed-Recipients"):
        return True
    sender = f"{msg.get('From', '')} {msg.get('Return-Path', '')}"
    subj = ctx.subject
    if _BOUNCE_FROM_RE.search(sender) or str(msg.get("Return-Path", "")).strip() == "<>":
        return bool(_BOUNCE_SUBJECT_RE.search(subj) or _BOUNCE_BODY_RE.search(ctx.body[:6000]))
    if _BOUNCE_SUBJECT_RE.search(subj) and _BOUNCE_BODY_RE.search(ctx.body[:6000]):
        return True
    # Any sender and subject (e.g. in another language): an explicit delivery failure
    # statement together with the returned message.
    return bool(ctx.parts.returned and _FAILURE_STATEMENT_RE.search(ctx.body[:6000]))


_FAILURE_STATEMENT_RE = re.compile(
    r"could not be delivered to|couldn't be delivered to|delivery to the following recipients? "
    r"failed|wasn't able to deliver|unable to deliver (?:your )?message to|undeliverable|"
    r"permanent (?:fatal )?error|did not reach the following recipient",
    re.I,
)


_BOUNCE_BODY_RE = re.compile(
    r"could not be delivered|couldn't be delivered|wasn't able to deliver|unable to deliver|"
    r"delivery (?:to the following|has failed|failed|status)|permanent(?:ly)? (?:error|fatal|"
    r"failure)|following address(?:es|\(es\))? failed|undeliver|did not reach|"
    r"delivery (?:problem|failure)|returned to (?:the )?sender|message was not delivered|"
    r"remote host said|said: [45]\d\d|user unknown|mailbox|smtp error|rejected|"
    r"failed permanently|not (?:be )?delivered|delivery to the following|error|"
    r"delayed|temporar(?:y|ily)|transient|failure",
    re.I,
)

_CUT_RE = re.compile(
    r"^[ \t]*(?:"
    r"-{2,}.{0,40}(?:original|copy of|returned|unsent|message header|headers? (?:of|follow)|"
    r"below this line|rfc ?822|message text|enclosed|undelivered message)"
    r"|(?:original|returned|unsent|undelivered) message(?: headers?)? follows?"
    r"|message headers follow"
    r"|(?:the )?(?:headers|header) (?:of|from) (?:the|your) (?:original )?message"
    r"|-{3,} ?original message ?-{3,}"
    r"|content-type: message/rfc822"
    r"|return-path: ?<"
    r"|received: (?:from|by) "
    r"|dkim-signature: "
    r")",
    re.I | re.M,
)


# The same, without re.I, for lowercased ASCII text: case-insensitive scanning is several times
# slower, and this runs over every plain-text bounce.
_CUT_LOWER_RE = re.compile(_CUT_RE.pattern, re.M)


def _cut_returned(text: str) -> str:
    if text.isascii():  # lower() keeps every offset of ASCII text
        m = _CUT_LOWER_RE.search(text.lower())
    else:
        m = _CUT_RE.search(text)
    return text[: m.start()] if m else text


def _snippet_for(region: str, final: str, original: str | None) -> str:
    """The lines of a human-readable region that talk about one address."""
    if not region:
        return ""
    low = region.lower()
    for addr in (final, original):
        if not addr:
            continue
        pos = low.find(addr.lower())
        if pos >= 0:
            line_start = low.rfind("\n", 0, pos) + 1
            chunk = region[line_start : line_start + 600]
            for nxt in _NEXT_RCPT_RE.finditer(chunk, pos - line_start + len(addr)):
                if addr.lower() not in nxt.group(0).lower():  # another recipient's lines
                    chunk = chunk[: nxt.start()]
                    break
            return _SPACE_RE.sub(" ", chunk).strip()
    return ""


_NEXT_RCPT_RE = re.compile(r"\n\s*<?[^\s<>@]+@[^\s<>]+>?(?::|\s*$)", re.M)
_NOT_RCPT_LOCAL = re.compile(r"^(?:mailer-daemon|mail-daemon|mailerdaemon)$", re.I)


def _from_plain(ctx: _Context) -> Report:
    msg = ctx.msg
    body = ctx.body.replace("\r\n", "\n").replace("\r", "\n")
    region = _cut_returned(body)
    tail = body[len(region) :]
    returned = ctx.returned
    if not returned and tail:
        returned = _headers_from_text(tail)
        ctx.returned = returned

    senders: set[str] = set()
    for h in ("From", "To", "Delivered-To", "X-Original-To", "Return-Path", "Reply-To", "Sender"):
        for v in msg.get_all(h):
            for m in _ADDR_RE.finditer(_decode_header(v)):
                senders.add(_addr(m.group(1), m.group(2)).lower())
    for h in ("from", "return-path", "reply-to", "sender"):
        for m in _ADDR_RE.finditer(returned.get(h, "")):
            senders.add(_addr(m.group(1), m.group(2)).lower())

    failed = [a.strip() for v in msg.get_all("X-Failed-Recipients") for a in v.split(",")]
    failed = [c for c in (_clean_address(a) for a in failed if a) if c]

    # Candidate recipients: addresses in the human-readable region, in order; "strong" ones
    # stand where bounces put the failed address (alone on a line, "<addr>:", "to <addr>", ...).
    strong: list[tuple[str, int]] = []
    weak: list[tuple[str, int]] = []
    strong_senders: list[tuple[str, int]] = []
    seen: set[str] = set()
    for n, m in enumerate(_ADDR_RE.finditer(region)):
        if n >= _MAX_CANDIDATES:
            break
        local, domain = m.group(1), m.group(2)
        addr = _addr(local.strip(), domain)
        key = addr.lower()
        if key in seen or _NOT_RCPT_LOCAL.match(local):
            continue
        if not _plausible(region, m.start(), m.end()):
            continue
        seen.add(key)
        line_start = max(region.rfind("\n", 0, m.start()) + 1, m.start() - 200)
        line_end = region.find("\n", m.end(), m.end() + 200)
        line = (
            region[line_start : m.start()]
            + "ADDR"
            + region[m.end() : line_end if line_end >= 0 else m.end() + 200]
        )
        if _STRONG_RE.search(line):
            (strong_senders if key in senders else strong).append((addr, m.start()))
        elif key not in senders:
            weak.append((addr, m.start()))
    found = strong or strong_senders
    if not found and _SMTP_EVIDENCE_RE.search(region):
        found = weak

    positions = {a.lower(): p for a, p in found}
    if failed and strong and not any(a.lower() in positions for a in failed):
        failed = []  # X-Failed-Recipients contradicts the report itself: trust the report
    if failed:
        chosen = [(a, positions.get(a.lower(), -1)) for a in failed]
    else:
        chosen = found
        rcpt_hdrs = " ".join(returned.get(h, "") for h in ("to", "cc"))
        if not chosen and rcpt_hdrs and _SMTP_EVIDENCE_RE.search(region):
            m = _ADDR_RE.search(rcpt_hdrs)
            if m:
                chosen = [(_addr(m.group(1), m.group(2)), -1)]

    recipients: list[Recipient] = []
    low_region = region.lower()
    occurrences: list[tuple[int, str]] = []  # every mention of every chosen address
    chosen = chosen[:_MAX_RECIPIENTS]
    for addr, _ in chosen:
        key = addr.lower()
        at = low_region.find(key)
        while at != -1 and len(occurrences) < 10 * _MAX_RECIPIENTS:
            occurrences.append((at, key))
            at = low_region.find(key, at + len(key))
    occurrences.sort()
    delayed = _DELAY_RE.search(ctx.subject) is not None and not _FAIL_SUBJ_RE.search(ctx.subject)
    for addr, pos in chosen:
        if pos >= 0:
            line_start = region.rfind("\n", 0, pos) + 1
            key = addr.lower()
            nxt = [p for p, a in occurrences if p > pos and a != key]
            end = nxt[0] if nxt else min(len(region), pos + 4000)
            if nxt:
                end = region.rfind("\n", 0, end) + 1 or end
                end = max(end, pos + 1)
            # Sendmail: a later "While talking to HOST:" opens the transcript of another
            # connection, whose replies are not this recipient's.
            talk = low_region.find("\nwhile talking to ", pos, end)
            if talk >= 0:
                end = talk
            diag = region[line_start:end]
            if len(chosen) == 1:
                before = region[:line_start]
                diag = f"{diag}\n{before}"
        else:
            diag = region
        diag = _WS_RE.sub(" ", diag).strip()[:2000]
        status = extract_status(diag)
        reply = extract_reply_code(diag)
        kind = Kind.DELAY if delayed else Kind.BOUNCE
        verdict = classify(diag, status=status, reply_code=reply)
        recipients.append(Recipient(addr, None, kind, status, reply, diag, None, verdict))
    if not recipients:
        return ctx.report(Kind.UNKNOWN, ())
    return ctx.report(_overall(recipients), tuple(recipients))


_MAX_CANDIDATES = 500  # addresses looked at in one report
_MAX_RECIPIENTS = 100  # recipients reported from one non-standard bounce
_STRONG_RE = re.compile(
    r"^\W*ADDR\W*$"
    r"|^\s*[<\"'(\[]*ADDR"
    r"|^\s*+(?!(?:mail )?from\b|sender\b|reply-to\b|cc\b)\w[\w ]{0,39}:\s*[<\"]?ADDR[>\"]?\W*$"
    r"|\d{3}[ -]<?ADDR>?(?:\.\.\.|:)"
    r"|(?:^|\s)(?:to|for|recipients?|address(?:es)?|rcpt|destinataire|an|a)\W{0,3}[<\"(]?ADDR"
    r"|^\s*[*>-]+\s*<?ADDR"
    r"|^\s*(?:final-recipient|original-recipient|recipient|address|to|rcpt to|"
    r"failed recipient|e-?mail)\s*:\s*(?:rfc822;\s*)?[<\"]?ADDR",
    re.I,
)
_SMTP_EVIDENCE_RE = re.compile(
    r"(?<![\d.])[245]\d\d[ -]|#?[245]\.\d{1,3}\.\d{1,3}\b|said:|smtp error|remote host",
    re.I,
)
_DELAY_RE = re.compile(r"delay|warning|still (?:being )?(?:tried|trying)|retrying", re.I)
_FAIL_SUBJ_RE = re.compile(r"fail|undeliver|returned|error|rejected", re.I)


def _plausible(region: str, start: int, end: int) -> bool:
    """Skip addresses inside URLs and Message-IDs."""
    before = region[max(0, start - 12) : start].lower()
    if "://" in before or before.endswith("message-id: <") or before.endswith("id=<"):
        return False
    after = region[end : end + 1]
    return after != "/"
