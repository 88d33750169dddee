"""SendGrid's signed event webhook.

Verified as SendGrid documents it: ``X-Twilio-Email-Event-Webhook-Signature`` is an ECDSA
(P-256, SHA-256) signature, base64 DER, over ``X-Twilio-Email-Event-Webhook-Timestamp``
followed by the raw body, under the account's verification key (base64 DER or PEM, as SendGrid
shows it). A timestamp older than ``max_age`` is stale; the caller refuses a signature seen
before (a replay). The body is a JSON array of events; ``sg_event_id`` makes a duplicate one.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from postwarden.domain.status import Kind
from postwarden.inbound.webhooks import common
from postwarden.inbound.webhooks.common import Event, Refused

SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"


def public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER), or PEM; ValueError otherwise."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError(f"not an ECDSA public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an ECDSA public key")
    return key


def verify(
    key_text: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime,
    max_age: timedelta,
) -> str:
    """The request's signature (the nonce of a replay check) once it verifies; Refused
    otherwise. ``headers`` must be case-insensitive."""
    signature = headers.get(SIGNATURE, "")
    stamp = headers.get(TIMESTAMP, "")
    if not signature or not stamp:
        raise Refused(401, f"no {SIGNATURE} or {TIMESTAMP} header")
    try:
        key = public_key(key_text)
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature) as exc:
        raise Refused(403, "the SendGrid signature does not verify") from exc
    sent = common.when(stamp)
    if sent is None or abs(now - sent) > max_age:
        raise Refused(403, f"the SendGrid signature is stale (signed at {stamp})")
    return signature


def _kind(event: Mapping[str, Any]) -> tuple[Kind | None, dict[str, Any]]:
    name = event.get("event")
    text = event.get("reason") or event.get("response")
    if name == "delivered":
        return Kind.DELIVERED, {"detail": event.get("response")}
    if name == "deferred":
        reason, _hard, code, detail = common.bounce(text, event.get("status"), permanent=False)
        return Kind.DELAYED, {"reason": reason, "hard": False, "code": code, "detail": detail}
    if name == "bounce":
        # type "bounce": permanent; type "blocked": "would not accept the message temporarily"
        permanent = event.get("type", "bounce") == "bounce"
        reason, hard, code, detail = common.bounce(text, event.get("status"), permanent=permanent)
        return Kind.BOUNCED, {"reason": reason, "hard": hard, "code": code, "detail": detail}
    if name == "dropped":
        # Not sent by SendGrid: its own suppression ("Bounced Address", "Invalid") or content.
        known = text in ("Bounced Address", "Invalid")
        reason, hard, code, detail = common.bounce(
            text, "5.1.1" if known else None, permanent=known
        )
        return Kind.BOUNCED, {"reason": reason, "hard": hard, "code": code, "detail": detail}
    if name == "spamreport":
        return Kind.COMPLAINED, {"detail": "the recipient reported the message (spam report)"}
    if name in ("unsubscribe", "group_unsubscribe"):
        return Kind.UNSUBSCRIBED, {"detail": "the recipient unsubscribed at SendGrid"}
    if name in ("open", "click"):
        kind = Kind.OPENED if name == "open" else Kind.CLICKED
        agent = str(event.get("useragent") or "")
        flag = event.get("sg_machine_open") if name == "open" else None
        machine = common.engagement(
            kind, agent, str(event.get("ip") or ""), None if flag is None else bool(flag)
        )
        data = {"machine": machine, "user_agent": agent[:200]}
        if name == "click":
            data["url"] = event.get("url")
        return kind, {"detail": f"{name} reported by SendGrid", "data": data}
    return None, {}  # processed, group_resubscribe...


def parse(body: bytes) -> list[Event]:
    events = common.load_json(body)
    if not isinstance(events, list):
        raise ValueError("a SendGrid event post is a JSON array")
    found = []
    for raw in events:
        if not isinstance(raw, dict):
            raise ValueError("a SendGrid event is a JSON object")
        kind, fields = _kind(raw)
        sg_id = str(raw.get("sg_message_id") or "")
        found.append(
            Event(
                event_id=str(raw.get("sg_event_id") or common.digest(raw)),
                event_type=str(raw.get("event") or "unknown"),
                kind=kind,
                occurred_at=common.when(raw.get("timestamp")),
                recipient=raw.get("email"),
                # sg_message_id is the X-Message-ID of the 250 reply, then ".filter...".
                provider_message_id=sg_id.split(".filter", 1)[0] or None,
                message_ids=tuple(v for v in (raw.get("smtp-id"),) if v),
                token=raw.get(common.TOKEN_ARGUMENT),
                payload=raw,
                **fields,
            )
        )
    return found
