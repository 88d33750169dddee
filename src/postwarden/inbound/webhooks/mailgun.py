"""Mailgun's webhooks.

Verified as Mailgun documents it: ``signature.signature`` is the hex HMAC-SHA256, under the
account's webhook signing key, of ``signature.timestamp`` followed by ``signature.token``.
Beyond what Mailgun asks (and what django-anymail does), a timestamp older than ``max_age``
(5 minutes) is refused as stale, and the caller refuses a token seen before (a replay).
One event per request; ``event-data.id`` makes a duplicate one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from postwarden.domain.status import Kind
from postwarden.inbound.webhooks import common
from postwarden.inbound.webhooks.common import Event, Refused


def verify(
    signing_key: str, payload: Mapping[str, Any], *, now: datetime, max_age: timedelta
) -> str:
    """The request's token (the nonce of a replay check) once it verifies; Refused otherwise."""
    signature = payload.get("signature")
    if not isinstance(signature, dict) or not all(
        isinstance(signature.get(k), str | int) for k in ("timestamp", "token", "signature")
    ):
        raise Refused(401, "no Mailgun signature")
    stamp, token = str(signature["timestamp"]), str(signature["token"])
    expected = hmac.new(signing_key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(signature["signature"])):
        raise Refused(403, "the Mailgun signature does not verify")
    sent = common.when(stamp)
    if sent is None or now - sent > max_age or sent - now > max_age:
        raise Refused(403, f"the Mailgun signature is stale (signed at {stamp})")
    return token


def parse(payload: Mapping[str, Any]) -> list[Event]:
    data = payload.get("event-data")
    if not isinstance(data, dict):
        raise ValueError("a Mailgun webhook carries event-data")
    name = str(data.get("event") or "unknown")
    status = data.get("delivery-status") or {}
    message = data.get("message") or {}
    headers = message.get("headers") or {}
    text = status.get("message") or status.get("description") or data.get("reason")
    code = status.get("enhanced-code") or None
    fields: dict[str, Any] = {"data": {}}
    kind: Kind | None = None
    if name == "delivered":
        kind, fields["detail"] = Kind.DELIVERED, status.get("message")
    elif name == "failed":
        permanent = data.get("severity") == "permanent"
        reason, hard, code, detail = common.bounce(text, code, permanent=permanent)
        # A temporary failure is Mailgun still trying: a delay, not a bounce.
        kind = Kind.BOUNCED if permanent else Kind.DELAYED
        fields |= {"reason": reason, "hard": hard, "code": code, "detail": detail}
        fields["data"] = {"severity": data.get("severity"), "mx_host": status.get("mx-host")}
    elif name == "rejected":
        kind = Kind.BOUNCED
        fields |= {"reason": "rejected", "hard": False, "detail": text or "Mailgun rejected it"}
    elif name == "complained":
        kind, fields["detail"] = Kind.COMPLAINED, "the recipient reported the message (Mailgun)"
    elif name == "unsubscribed":
        kind, fields["detail"] = Kind.UNSUBSCRIBED, "the recipient unsubscribed at Mailgun"
    elif name in ("opened", "clicked"):
        kind = Kind.OPENED if name == "opened" else Kind.CLICKED
        client = data.get("client-info") or {}
        agent = str(client.get("user-agent") or "")
        bot = client.get("bot")
        machine = common.engagement(kind, agent, str(data.get("ip") or ""), bool(bot) or None)
        fields["data"] = {"machine": machine, "user_agent": agent[:200]}
        if kind is Kind.CLICKED:
            fields["data"]["url"] = data.get("url")
        fields["detail"] = f"{name} reported by Mailgun"
    variables = data.get("user-variables") or {}
    message_id = headers.get("message-id")
    return [
        Event(
            event_id=str(data.get("id") or common.digest(data)),
            event_type=name,
            kind=kind,
            occurred_at=common.when(data.get("timestamp")),
            recipient=data.get("recipient"),
            provider_message_id=message_id,
            message_ids=(f"<{message_id}>",) if message_id else (),
            token=variables.get(common.TOKEN_ARGUMENT),
            payload=dict(payload.get("event-data") or {}),
            **fields,
        )
    ]
