"""Twilio's webhooks: message status callbacks (receipts) and incoming messages (replies).

A request is accepted only with a valid ``X-Twilio-Signature`` (HMAC-SHA1 under the account's
auth token of the URL and the sorted POST parameters), a callback URL issued less than
``max_age`` ago (its issue time is part of the signed URL), and not seen before
(``I-Twilio-Idempotency-Token``, else the signature and parameters).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from postwarden.domain import receipts, sms
from postwarden.inbound.webhooks import guard

SIGNATURE_HEADER = "X-Twilio-Signature"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"


def verify(
    token: str,
    url: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    now: datetime,
    max_age: timedelta,
    replays: guard.Replays,
) -> guard.Refused | None:
    """None when the request is Twilio's, fresh and new; else why it is refused.

    ``headers`` must be case-insensitive (Starlette's and httpx's are)."""
    signature = headers.get(SIGNATURE_HEADER, "")
    if not signature:
        return guard.Refused("unsigned", f"no {SIGNATURE_HEADER} header")
    if not any(
        hmac.compare_digest(receipts.twilio_signature(token, u, params), signature)
        for u in receipts.twilio_url_variants(url)
    ):
        return guard.Refused("forged", "the signature does not match the URL and parameters")
    _message_id, issued = receipts.callback_fields(url)
    if issued is not None and now - issued > max_age:
        return guard.Refused("stale", f"callback URL issued {issued.isoformat()}, too long ago")
    key = (
        headers.get(IDEMPOTENCY_HEADER)
        or hashlib.sha256((signature + repr(sorted(params.items()))).encode()).hexdigest()
    )
    if not replays.first_time(f"twilio:{key}", now):
        return guard.Refused("replayed", "this request was received before")
    return None


def _done_date(value: str | None) -> datetime | None:
    """``RawDlrDoneDate`` (YYMMDDhhmm, the carrier's time of the final state), as UTC."""
    if not value or not value.isdigit() or len(value) != 10:
        return None
    try:
        return datetime.strptime(value, "%y%m%d%H%M").replace(tzinfo=UTC)
    except ValueError:
        return None


def status(url: str, params: Mapping[str, str]) -> receipts.Receipt | None:
    """The receipt a (verified) status callback carries; None when it names no message."""
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    word = (params.get("MessageStatus") or params.get("SmsStatus") or "").lower()
    if not sid or not word:
        return None
    state = receipts.TWILIO_STATES.get(word, "bounced")
    code = params.get("ErrorCode") or None
    message_id, _issued = receipts.callback_fields(url)
    detail = word + (f" (error {code})" if code else "")
    if params.get("ErrorMessage"):
        detail += f": {params['ErrorMessage']}"
    return receipts.Receipt(
        "twilio",
        sid,
        state,
        word,
        code,
        receipts.twilio_meaning(word, code) if state == "bounced" else None,
        detail,
        _done_date(params.get("RawDlrDoneDate")),
        message_id,
        params.get("To"),
        dict(params),
    )


def reply(params: Mapping[str, str]) -> receipts.Reply | None:
    """An incoming message (a reply). Twilio's own opt-out handling names STOP/START/HELP in
    ``OptOutType``; otherwise the keyword is read from the body as Twilio would."""
    sender = params.get("From", "")
    if not sender:
        return None
    body = params.get("Body", "")
    opt = (params.get("OptOutType") or "").lower()
    keyword = opt if opt in ("stop", "start", "help") else sms.keyword(body)
    return receipts.Reply(
        "twilio",
        sender,
        params.get("To", ""),
        body,
        keyword,  # type: ignore[arg-type]
        params.get("MessageSid", ""),
        None,
        dict(params),
    )
