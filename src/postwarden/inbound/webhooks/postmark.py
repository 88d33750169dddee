"""Postmark's webhooks.

Postmark signs nothing: its webhooks are authenticated by HTTP basic auth (the credentials put
in the webhook's URL at Postmark, compared in constant time) and, optionally, by the address
they come from (Postmark publishes its webhook senders' addresses). One event per request, by
``RecordType``; a bounce's kind and permanence come from its ``TypeCode``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from postwarden.domain.status import Kind
from postwarden.inbound.webhooks import common
from postwarden.inbound.webhooks.common import Event, Refused

# TypeCode -> (kind, permanent, the status it stands for); postmark.js Bounce.d.ts
_BOUNCES: dict[int, tuple[Kind | None, bool, str | None]] = {
    1: (Kind.BOUNCED, True, "5.1.1"),  # HardBounce
    2: (Kind.DELAYED, False, "4.0.0"),  # Transient
    16: (Kind.UNSUBSCRIBED, False, None),  # Unsubscribe
    32: (None, False, None),  # Subscribe
    64: (None, False, None),  # AutoResponder
    128: (None, False, None),  # AddressChange
    256: (Kind.DELAYED, False, "4.4.3"),  # DnsError
    512: (Kind.COMPLAINED, False, None),  # SpamNotification
    1024: (Kind.DELAYED, False, None),  # OpenRelayTest
    2048: (Kind.BOUNCED, False, None),  # Unknown
    4096: (Kind.BOUNCED, False, "4.0.0"),  # SoftBounce
    8192: (Kind.BOUNCED, False, "5.7.1"),  # VirusNotification
    16384: (None, False, None),  # ChallengeVerification
    100000: (Kind.BOUNCED, True, "5.1.3"),  # BadEmailAddress
    100001: (Kind.COMPLAINED, False, None),  # SpamComplaint
    100002: (Kind.BOUNCED, False, "5.7.1"),  # ManuallyDeactivated
    100003: (None, False, None),  # Unconfirmed
    100006: (Kind.BOUNCED, False, "5.7.1"),  # Blocked
    100007: (Kind.BOUNCED, False, None),  # SMTPApiError
    100008: (None, False, None),  # InboundError
    100009: (Kind.BOUNCED, False, "5.7.26"),  # DMARCPolicy
    100010: (Kind.BOUNCED, False, None),  # TemplateRenderingFailed
}


def verify(config: Mapping[str, Any], authorization: str | None, client_ip: str | None) -> None:
    """Refused: 401 without the account's basic-auth credentials, 403 from an address outside
    its allowlist (when it has one)."""
    user = str(config.get("username") or "")
    password = str(config.get("password") or "")
    given = b""
    if authorization and authorization[:6].lower() == "basic ":
        try:
            given = base64.b64decode(authorization[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            given = b""
    if not user or not hmac.compare_digest(given, f"{user}:{password}".encode()):
        raise Refused(401, "the Postmark webhook's credentials are missing or wrong")
    allowed = list(config.get("allowed_ips") or ())
    if allowed and not _allowed(client_ip, allowed):
        raise Refused(403, f"{client_ip} is not one of the addresses Postmark posts from")


def networks(cidrs: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The allowlist's networks (an address alone is a network of one); ValueError if one is
    not an address or a network."""
    return [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs]


def _allowed(ip: str | None, cidrs: Iterable[str]) -> bool:
    try:
        address = ipaddress.ip_address(ip or "")
    except ValueError:
        return False
    return any(address in n for n in networks(cidrs))


def parse(body: bytes) -> list[Event]:
    raw = common.load_json(body)
    if not isinstance(raw, dict):
        raise ValueError("a Postmark webhook is a JSON object")
    record = str(raw.get("RecordType") or "unknown")
    recipient = raw.get("Email") or raw.get("Recipient")
    fields: dict[str, Any] = {"data": {}}
    kind: Kind | None = None
    at = None
    if record == "Delivery":
        kind, at, fields["detail"] = Kind.DELIVERED, raw.get("DeliveredAt"), raw.get("Details")
    elif record == "Bounce":
        at = raw.get("BouncedAt")
        kind, permanent, status = _BOUNCES.get(int(raw.get("TypeCode") or 2048), _BOUNCES[2048])
        if kind in (Kind.BOUNCED, Kind.DELAYED):
            reason, hard, code, detail = common.bounce(
                raw.get("Details") or raw.get("Description"),
                None,
                permanent=permanent,
                default_status=status,
            )
            fields |= {"reason": reason, "hard": hard, "code": code, "detail": detail}
        else:
            fields["detail"] = raw.get("Description")
        fields["data"] = {"type": raw.get("Type"), "type_code": raw.get("TypeCode")}
    elif record == "SpamComplaint":
        kind, at = Kind.COMPLAINED, raw.get("BouncedAt")
        fields["detail"] = "the recipient reported the message (Postmark)"
    elif record in ("Open", "Click"):
        kind = Kind.OPENED if record == "Open" else Kind.CLICKED
        at = raw.get("ReceivedAt")
        agent = str(raw.get("UserAgent") or "")
        machine = common.engagement(kind, agent, "", None)
        fields["data"] = {"machine": machine, "user_agent": agent[:200]}
        if kind is Kind.CLICKED:
            fields["data"]["url"] = raw.get("OriginalLink")
        fields["detail"] = f"{record.lower()} reported by Postmark"
    elif record == "SubscriptionChange":
        at = raw.get("ChangedAt")
        why = raw.get("SuppressionReason")
        if raw.get("SuppressSending") and why == "SpamComplaint":
            kind = Kind.COMPLAINED
        elif raw.get("SuppressSending") and why == "ManualSuppression":
            kind = Kind.UNSUBSCRIBED
        fields["detail"] = f"Postmark subscription change: {why}"
    metadata = raw.get("Metadata") or {}
    event_id = raw.get("ID")
    return [
        Event(
            event_id=f"{record}:{event_id}"
            if event_id
            else common.digest(record, raw.get("MessageID"), recipient, at),
            event_type=record if record != "Bounce" else f"Bounce/{raw.get('Type')}",
            kind=kind,
            occurred_at=common.when(at),
            recipient=recipient,
            provider_message_id=raw.get("MessageID"),
            token=metadata.get(common.TOKEN_ARGUMENT) if isinstance(metadata, dict) else None,
            payload=raw,
            **fields,
        )
    ]
