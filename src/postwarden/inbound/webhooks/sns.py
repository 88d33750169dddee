"""Amazon SES events through Amazon SNS.

Verification (https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html):
the ``SigningCertURL`` must be an https URL of ``sns.<region>.amazonaws.com`` (pinned with the
regular expression below: suffix matching let attackers host certificates on S3, django-ses's
CVE), the ``Signature`` an RSA PKCS#1 v1.5 signature by that certificate's key over the
message's canonical string (SHA1 for ``SignatureVersion`` 1, SHA256 for 2), and the
``TopicArn`` one of the account's: a valid signature only proves that *some* SNS topic sent it.

A ``SubscriptionConfirmation`` is confirmed by fetching its ``SubscribeURL`` (pinned the same
way). A ``Notification`` carries one SES event (event publishing's ``eventType`` or the older
notifications' ``notificationType``): Bounce, Complaint, Delivery, DeliveryDelay, Reject, Open
and Click are mapped; Send, Rendering Failure and Subscription are kept and change nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from postwarden.domain.status import Kind
from postwarden.inbound.webhooks import common
from postwarden.inbound.webhooks.common import Event, Refused

CERT_URL = re.compile(
    r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/SimpleNotificationService-[A-Za-z0-9]+\.pem$"
)
SUBSCRIBE_URL = re.compile(r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/\?")

NOTIFICATION = "Notification"
SUBSCRIBE = "SubscriptionConfirmation"
UNSUBSCRIBE = "UnsubscribeConfirmation"

_SIGNED = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIBE: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    UNSUBSCRIBE: (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}


def envelope(body: bytes) -> dict[str, Any]:
    """The SNS message posted; Refused (403) when it is not one."""
    try:
        found = json.loads(body)
    except ValueError:
        found = None
    if not isinstance(found, dict) or found.get("Type") not in _SIGNED:
        raise Refused(403, "not an Amazon SNS message")
    return found


def cert_url(message: Mapping[str, Any]) -> str:
    """The certificate to verify ``message`` with; Refused unless it is SNS's own."""
    url = message.get("SigningCertURL") or message.get("SigningCertUrl") or ""
    if not isinstance(url, str) or not CERT_URL.match(url):
        raise Refused(403, f"the signing certificate is not Amazon SNS's: {str(url)[:200]!r}")
    return url


def canonical(message: Mapping[str, Any]) -> bytes:
    """The string SNS signs: each signed field's name and value, one per line, in order."""
    lines = []
    for name in _SIGNED[message["Type"]]:
        value = message.get(name)
        if value is None:
            if name == "Subject":
                continue
            raise Refused(403, f"the SNS message has no {name}")
        lines += [name, str(value)]
    return ("\n".join(lines) + "\n").encode()


def verify(message: Mapping[str, Any], cert_pem: bytes, topics: Iterable[str]) -> None:
    """Refused (403) unless ``message`` is signed by the certificate's key and comes from one
    of the account's ``topics``."""
    algorithm = _HASHES.get(str(message.get("SignatureVersion")))
    if algorithm is None:
        raise Refused(403, f"unknown SignatureVersion {message.get('SignatureVersion')!r}")
    try:
        signature = base64.b64decode(message.get("Signature") or "", validate=True)
        key = x509.load_pem_x509_certificate(cert_pem).public_key()
    except (binascii.Error, ValueError) as exc:
        raise Refused(403, f"the SNS signature cannot be read: {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise Refused(403, "the SNS certificate does not hold an RSA key")
    try:
        key.verify(signature, canonical(message), padding.PKCS1v15(), algorithm())
    except InvalidSignature as exc:
        raise Refused(403, "the SNS signature does not verify") from exc
    topic = message.get("TopicArn")
    if topic not in set(topics):
        raise Refused(403, f"topic {topic!r} is not one of this account's")


def subscribe_url(message: Mapping[str, Any]) -> str:
    url = message.get("SubscribeURL") or ""
    if not isinstance(url, str) or not SUBSCRIBE_URL.match(url):
        raise Refused(403, "the SubscribeURL is not Amazon SNS's")
    return url


# region SES events


def _headers(mail: Mapping[str, Any]) -> dict[str, str]:
    found = {}
    for header in mail.get("headers") or ():
        if isinstance(header, dict) and "name" in header:
            found[str(header["name"]).lower()] = str(header.get("value", ""))
    return found


def _tag(mail: Mapping[str, Any], name: str) -> str | None:
    values = (mail.get("tags") or {}).get(name) or ()
    return str(values[0]) if values else None


_SUBTYPE_STATUS = {
    "NoEmail": "5.1.1",
    "Suppressed": "5.1.1",
    "OnAccountSuppressionList": "5.1.1",
    "MailboxFull": "5.2.2",
    "MessageTooLarge": "5.3.4",
    "ContentRejected": "5.6.0",
    "AttachmentRejected": "5.6.0",
}
"""The status each SES bounce subtype stands for, when the remote server's words are missing."""


def parse(message: Mapping[str, Any]) -> list[Event]:
    """The events of a verified ``Notification`` (one per recipient)."""
    try:
        ses = json.loads(message["Message"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the SNS Message is not an SES event: {exc}") from exc
    if not isinstance(ses, dict):
        raise ValueError("the SNS Message is not an SES event")
    event_type = str(ses.get("eventType") or ses.get("notificationType") or "unknown")
    mail = ses.get("mail") or {}
    headers = _headers(mail)
    common_headers = mail.get("commonHeaders") or {}
    base = {
        "provider_message_id": mail.get("messageId"),
        "message_ids": tuple(
            v for v in (common_headers.get("messageId"), headers.get("message-id")) if v
        ),
        "token": headers.get("x-postwarden-id") or _tag(mail, common.TOKEN_ARGUMENT),
        "payload": ses,
    }
    sns_id = str(message.get("MessageId"))
    found: list[tuple[str | None, Any, dict[str, Any]]] = []  # (recipient, when, fields)
    if event_type == "Bounce":
        b = ses.get("bounce") or {}
        permanent = b.get("bounceType") == "Permanent"
        for r in b.get("bouncedRecipients") or ():
            reason, hard, code, detail = common.bounce(
                r.get("diagnosticCode"),
                r.get("status"),
                permanent=permanent,
                default_status=_SUBTYPE_STATUS.get(b.get("bounceSubType", "")),
            )
            found.append(
                (
                    r.get("emailAddress"),
                    b.get("timestamp"),
                    {
                        "kind": Kind.BOUNCED,
                        "reason": reason,
                        "hard": hard,
                        "code": code,
                        "detail": detail,
                        "data": {"bounce_type": f"{b.get('bounceType')}/{b.get('bounceSubType')}"},
                    },
                )
            )
    elif event_type == "Complaint":
        c = ses.get("complaint") or {}
        feedback = c.get("complaintFeedbackType") or "abuse"
        kind = None if feedback == "not-spam" else Kind.COMPLAINED
        for r in c.get("complainedRecipients") or ():
            found.append(
                (
                    r.get("emailAddress"),
                    c.get("timestamp"),
                    {
                        "kind": kind,
                        "detail": f"the recipient reported the message ({feedback})",
                        "data": {"feedback_type": feedback},
                    },
                )
            )
    elif event_type == "Delivery":
        d = ses.get("delivery") or {}
        for address in d.get("recipients") or ():
            found.append(
                (
                    address,
                    d.get("timestamp"),
                    {"kind": Kind.DELIVERED, "detail": d.get("smtpResponse"), "data": {}},
                )
            )
    elif event_type == "DeliveryDelay":
        d = ses.get("deliveryDelay") or {}
        for r in d.get("delayedRecipients") or ():
            reason, _hard, code, detail = common.bounce(
                r.get("diagnosticCode"), r.get("status"), permanent=False
            )
            found.append(
                (
                    r.get("emailAddress"),
                    d.get("timestamp"),
                    {
                        "kind": Kind.DELAYED,
                        "reason": reason,
                        "hard": False,
                        "code": code,
                        "detail": detail,
                        "data": {"delay_type": d.get("delayType")},
                    },
                )
            )
    elif event_type == "Reject":
        why = (ses.get("reject") or {}).get("reason") or "rejected"
        for address in mail.get("destination") or ():
            found.append(
                (
                    address,
                    mail.get("timestamp"),
                    {
                        "kind": Kind.BOUNCED,
                        "reason": "virusdetected",  # SES rejects only for a virus
                        "hard": False,
                        "detail": f"Amazon SES refused to send it: {why}",
                        "data": {},
                    },
                )
            )
    elif event_type in ("Open", "Click"):
        e = ses.get(event_type.lower()) or {}
        kind = Kind.OPENED if event_type == "Open" else Kind.CLICKED
        agent = str(e.get("userAgent") or "")
        machine = common.engagement(kind, agent, str(e.get("ipAddress") or ""), None)
        data: dict[str, Any] = {"machine": machine, "user_agent": agent[:200]}
        if kind is Kind.CLICKED:
            data["url"] = e.get("link")
        for address in (mail.get("destination") or ())[:1]:
            found.append(
                (
                    address,
                    e.get("timestamp"),
                    {"kind": kind, "detail": f"{event_type.lower()} reported by SES", "data": data},
                )
            )
    else:  # Send, Rendering Failure, Subscription: kept, nothing to record
        for address in (mail.get("destination") or [None])[:1]:
            found.append((address, mail.get("timestamp"), {"kind": None, "data": {}}))
    return [
        Event(
            event_id=sns_id if i == 0 else f"{sns_id}/{i}",
            event_type=event_type,
            occurred_at=common.when(at) or common.when(message.get("Timestamp")),
            recipient=recipient,
            **base,
            **fields,
        )
        for i, (recipient, at, fields) in enumerate(found)
    ]


# endregion
