"""Signed tracking tokens: what the open pixel, click redirects and one-click unsubscribe
links carry, so no database is touched for a forged one.

Token layout (base64url, no padding)::

    version (1 byte) | message_id (unsigned LEB128 varint) | extra (varint) | MAC (12 bytes)

MAC = HMAC-SHA256(secret, domain-tag || purpose || 0x00 || everything before the MAC), cut to
96 bits. The purpose is bound by the MAC but not stored, so an open token never verifies as a
click token. A typical token is 22-24 characters.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re

PURPOSES = frozenset({"o", "c", "u"})  # open pixel, click redirect, unsubscribe
_VERSION = 1
_MAC_LEN = 12  # 96 bits
_DOMAIN = b"postwarden/track\x00"
_MAX_U64 = (1 << 64) - 1
_MAX_VARINT = 10  # bytes needed for 2**64 - 1
_MIN_RAW = 1 + 1 + 1 + _MAC_LEN
_MAX_RAW = 1 + _MAX_VARINT + _MAX_VARINT + _MAC_LEN
_MAX_TOKEN_CHARS = (_MAX_RAW * 4 + 2) // 3
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int] | None:
    """(value, next position) for a canonical (shortest) varint, else None."""
    value = shift = 0
    for i in range(pos, min(len(buf), pos + _MAX_VARINT)):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > pos:  # padded encoding such as 0x80 0x00: not ours
                return None
            return (value, i + 1) if value <= _MAX_U64 else None
        shift += 7
    return None


def _mac(secret: bytes, purpose: str, payload: bytes) -> bytes:
    msg = _DOMAIN + purpose.encode("ascii") + b"\x00" + payload
    return hmac.digest(secret, msg, "sha256")[:_MAC_LEN]


def sign(secret: bytes, purpose: str, message_id: int, extra: int = 0) -> str:
    """A URL-safe token binding ``purpose``, ``message_id`` and ``extra`` under ``secret``.

    ``purpose`` is "o" (open), "c" (click; extra = link index) or "u" (unsubscribe; extra =
    category hash). ``message_id`` and ``extra`` are unsigned 64-bit integers.
    Raises ValueError on bad arguments (this is the producer side; ``verify`` never raises).
    """
    if not isinstance(secret, bytes | bytearray) or not secret:
        raise ValueError("tracking secret must be non-empty bytes")
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}; expected one of {sorted(PURPOSES)}")
    for name, value in (("message_id", message_id), ("extra", extra)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_U64:
            raise ValueError(f"{name} must be an integer in [0, 2**64), got {value!r}")
    payload = bytes((_VERSION,)) + _uvarint(message_id) + _uvarint(extra)
    raw = payload + _mac(bytes(secret), purpose, payload)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def verify(secret: bytes, purpose: str, token: str) -> tuple[int, int] | None:
    """``(message_id, extra)`` if ``token`` was made by ``sign(secret, purpose, ...)``, else None.

    Forged, truncated, extended, wrong-purpose, non-canonical and malformed tokens all give
    None; the MAC comparison is constant-time; never raises.
    """
    try:
        if not isinstance(token, str) or not isinstance(secret, bytes | bytearray) or not secret:
            return None
        if purpose not in PURPOSES:
            return None
        n = len(token)
        if n < 20 or n > _MAX_TOKEN_CHARS or n % 4 == 1 or not _B64URL.fullmatch(token):
            return None
        raw = base64.urlsafe_b64decode(token + "=" * (-n % 4))
        # Base64 lets the unused low bits of the last character vary: accept one spelling only.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            return None
        if not _MIN_RAW <= len(raw) <= _MAX_RAW:
            return None
        payload, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        if not hmac.compare_digest(mac, _mac(bytes(secret), purpose, payload)):
            return None
        if payload[0] != _VERSION:
            return None
        first = _read_uvarint(payload, 1)
        if first is None:
            return None
        message_id, pos = first
        second = _read_uvarint(payload, pos)
        if second is None:
            return None
        extra, pos = second
        if pos != len(payload):
            return None
        return message_id, extra
    except Exception:  # never raise on hostile input
        return None


UNSUBSCRIBE_POST = "List-Unsubscribe=One-Click"
"""The body of an RFC 8058 one-click unsubscribe POST."""


@functools.lru_cache(maxsize=1024)  # a few categories, one token per message sent
def category_tag(category: str) -> int:
    """The ``extra`` of an unsubscribe token: 32 bits of the category's digest, so a token
    minted for one category never unsubscribes a message of another."""
    return int.from_bytes(hashlib.sha256(category.encode()).digest()[:4], "big")
