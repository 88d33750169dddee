"""VERP return paths: one per message, so a bounce mail names the exact message it is about.

``b+<token>@<bounce domain>`` where the token is the message id and a truncated HMAC: opaque,
unforgeable, and short enough for any MTA's 64-character local part limit.
"""

from __future__ import annotations

import base64
import hmac

PREFIX = "b+"
TOKEN_HEADER = "X-Postwarden-Id"
"""Carries the message's VERP token, so a bounce that quotes only the headers still matches."""
_MAC_BYTES = 8


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.digest(secret, b"verp:" + payload, "sha256")[:_MAC_BYTES]


def token(secret: bytes, message_id: int) -> str:
    payload = message_id.to_bytes(8, "big").lstrip(b"\0") or b"\0"
    raw = payload + _mac(secret, payload)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def address(secret: bytes, message_id: int, bounce_domain: str) -> str:
    return f"{PREFIX}{token(secret, message_id)}@{bounce_domain}"


def message_id_of(secret: bytes, value: str) -> int | None:
    """The message id in a VERP address or bare token, or None if it is not a valid one."""
    local = value.strip().strip("<>").rpartition("@")[0] or value.strip()
    if local.lower().startswith(PREFIX):
        local = local[len(PREFIX) :]
    text = local.upper()
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except ValueError:
        return None
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if not payload or not hmac.compare_digest(mac, _mac(secret, payload)):
        return None
    return int.from_bytes(payload, "big")
