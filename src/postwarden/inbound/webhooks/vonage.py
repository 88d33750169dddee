"""Vonage's SMS API webhooks: delivery receipts and inbound messages (replies).

With a signature secret configured, a request is accepted only with a valid ``sig`` over its
parameters, a ``timestamp`` (when Vonage signed it) within ``max_skew`` of now, and a
``nonce`` not seen before. Vonage sends one receipt per part of a long text.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from postwarden.domain import receipts, sms
from postwarden.inbound.webhooks import guard


def verify(
    secret: str,
    method: str,
    params: Mapping[str, str],
    *,
    now: datetime,
    max_skew: timedelta,
    replays: guard.Replays,
) -> guard.Refused | None:
    """None when the signed request is Vonage's, fresh and new; else why it is refused."""
    sig = (params.get("sig") or "").lower()
    if not sig:
        return guard.Refused("unsigned", "no sig parameter")
    if not hmac.compare_digest(receipts.vonage_signature(secret, method, params), sig):
        return guard.Refused("forged", "the sig does not match the parameters")
    try:
        signed = datetime.fromtimestamp(int(params.get("timestamp", "")), UTC)
    except (ValueError, OverflowError, OSError):
        return guard.Refused("stale", "no valid timestamp")
    if abs(now - signed) > max_skew:
        return guard.Refused("stale", f"signed at {signed.isoformat()}, too far from now")
    if not replays.first_time(f"vonage:{params.get('nonce') or sig}", now):
        return guard.Refused("replayed", "this request was received before")
    return None


def _when(params: Mapping[str, str]) -> datetime | None:
    """``scts`` (YYMMDDhhmm, the carrier's time), else ``message-timestamp``, as UTC."""
    scts = params.get("scts", "")
    for value, fmt in (
        (scts, "%y%m%d%H%M"),
        (params.get("message-timestamp", ""), "%Y-%m-%d %H:%M:%S"),
    ):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def receipt(params: Mapping[str, str]) -> receipts.Receipt | None:
    """The receipt a (verified) delivery receipt carries; None when it names no message.
    ``client-ref`` is our message id (the SMS channel sets it)."""
    pid = params.get("messageId") or params.get("message-id") or ""
    word = (params.get("status") or "").lower()
    if not pid or not word:
        return None
    state = receipts.VONAGE_STATES.get(word, "bounced")
    code = params.get("err-code")
    ref = params.get("client-ref", "")
    detail = word + (f" (err-code {code})" if code not in (None, "", "0") else "")
    return receipts.Receipt(
        "vonage",
        pid,
        state,
        word,
        code,
        receipts.vonage_meaning(word, code) if state == "bounced" else None,
        detail,
        _when(params),
        int(ref) if ref.isdigit() else None,
        params.get("msisdn"),
        dict(params),
    )


def reply(params: Mapping[str, str]) -> receipts.Reply | None:
    """An inbound message; Vonage names the first word in ``keyword``."""
    sender = params.get("msisdn", "")
    if not sender:
        return None
    text = params.get("text", "")
    return receipts.Reply(
        "vonage",
        sender if sender.startswith("+") else f"+{sender}",
        params.get("to", ""),
        text,
        sms.keyword(text),
        params.get("messageId", ""),
        _when(params),
        dict(params),
    )
