"""Provider event payloads as each provider documents them (trimmed to what matters, values
from their examples), made for a given message, recipient and time.

- Amazon SES: "Examples of event data that Amazon SES publishes to Amazon SNS"
  (event-publishing-retrieving-sns-examples) and the notification contents;
- SendGrid: the Event Webhook reference's sample events;
- Mailgun: the Webhooks guide's "failed" and "delivered" event-data;
- Postmark: the Bounce / Delivery webhook examples.
"""

from __future__ import annotations

from typing import Any


def ses_mail(message_id: str, to: str, message_header_id: str = "") -> dict[str, Any]:
    return {
        "timestamp": "2016-10-19T23:20:52.240Z",
        "source": "sender@example.com",
        "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/sender@example.com",
        "sendingAccountId": "123456789012",
        "messageId": message_id,
        "destination": [to],
        "headersTruncated": False,
        "headers": [
            {"name": "From", "value": "sender@example.com"},
            {"name": "To", "value": to},
            {"name": "Subject", "value": "Message sent from Amazon SES"},
            {"name": "Message-ID", "value": message_header_id or "<none@example.com>"},
        ],
        "commonHeaders": {
            "from": ["sender@example.com"],
            "to": [to],
            "messageId": message_header_id or "<none@example.com>",
            "subject": "Message sent from Amazon SES",
        },
        "tags": {"ses:configuration-set": ["ConfigSet"]},
    }


def ses_bounce(
    message_id: str, to: str, *, permanent: bool = True, when: str = "2017-08-05T00:41:02.669Z"
) -> dict[str, Any]:
    if permanent:
        bounce = {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": to,
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
        }
    else:
        bounce = {
            "bounceType": "Transient",
            "bounceSubType": "MailboxFull",
            "bouncedRecipients": [
                {
                    "emailAddress": to,
                    "action": "failed",
                    "status": "5.2.2",
                    "diagnosticCode": "smtp; 552 5.2.2 Mailbox full",
                }
            ],
        }
    bounce |= {
        "timestamp": when,
        "feedbackId": "01000157c44f053b-61b59c11-9236-11e6-8f96-7be8aexample-000000",
        "reportingMTA": "dsn; mta.example.com",
    }
    return {"eventType": "Bounce", "bounce": bounce, "mail": ses_mail(message_id, to)}


def ses_delivery(message_id: str, to: str) -> dict[str, Any]:
    return {
        "eventType": "Delivery",
        "mail": ses_mail(message_id, to),
        "delivery": {
            "timestamp": "2016-10-19T23:21:04.133Z",
            "processingTimeMillis": 11893,
            "recipients": [to],
            "smtpResponse": "250 2.6.0 Message received",
            "reportingMTA": "mta.example.com",
        },
    }


def ses_complaint(message_header_id: str, to: str) -> dict[str, Any]:
    return {
        "eventType": "Complaint",
        "complaint": {
            "feedbackId": "0100015e3e8b4b9a-31e3b6d4-8c0f-4e6d-b62f-4b8c1e0f1d10-000000",
            "complaintSubType": None,
            "complainedRecipients": [{"emailAddress": to}],
            "timestamp": "2017-08-05T00:41:02.669Z",
            "userAgent": "Mozilla/5.0",
            "complaintFeedbackType": "abuse",
            "arrivalDate": "2017-08-05T00:41:02.669Z",
        },
        "mail": ses_mail("not-a-known-ses-id", to, message_header_id),
    }


def sendgrid_events(sg_message_id: str, to: str, smtp_id: str = "<none@example.com>") -> list[Any]:
    base = {
        "email": to,
        "timestamp": 1513299569,
        "smtp-id": smtp_id,
        "sg_message_id": f"{sg_message_id}.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5A31E3B5-3.0",
        "category": "cat facts",
    }
    return [
        base | {"event": "processed", "sg_event_id": "rbtnWrG1DVDGGGFHFyun0A=="},
        base
        | {
            "event": "delivered",
            "sg_event_id": "rWVYmVk90MjZJ9iohOBa3w==",
            "response": "250 OK",
        },
        base
        | {
            "event": "open",
            "sg_event_id": "FOTFFO0ecsBE-zxFXfs6WA==",
            "useragent": "Mozilla/4.0 (compatible; MSIE 6.1; Windows XP; .NET CLR 1.1.4322)",
            "ip": "255.255.255.255",
            "sg_machine_open": True,
        },
        base
        | {
            "event": "bounce",
            "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
            "reason": "500 unknown recipient",
            "status": "5.0.0",
            "type": "bounce",
        },
    ]


def mailgun_failed(message_header_id: str, to: str, timestamp: float) -> dict[str, Any]:
    return {
        "id": "G9Bn5sl1TC6nu79C8C0bwg",
        "timestamp": timestamp,
        "log-level": "error",
        "event": "failed",
        "severity": "permanent",
        "reason": "suppress-bounce",
        "envelope": {"sender": "bob@sandbox.mailgun.org", "transport": "smtp"},
        "flags": {"is-routed": False, "is-authenticated": True, "is-system-test": False},
        "recipient-domain": to.partition("@")[2],
        "delivery-status": {
            "attempt-no": 1,
            "message": "550 5.1.1 The email account that you tried to reach does not exist.",
            "code": 550,
            "description": "",
            "session-seconds": 0.1,
        },
        "message": {
            "headers": {
                "to": to,
                "message-id": message_header_id,
                "from": "Bob <bob@sandbox.mailgun.org>",
                "subject": "Test permanent_fail webhook",
            },
            "attachments": [],
            "size": 111,
        },
        "recipient": to,
        "user-variables": {},
    }


def postmark_bounce(message_id: str, to: str, type_code: int = 1) -> dict[str, Any]:
    kinds = {1: "HardBounce", 4096: "SoftBounce", 2: "Transient"}
    return {
        "RecordType": "Bounce",
        "MessageStream": "outbound",
        "ID": 4323372036854775807,
        "Type": kinds[type_code],
        "TypeCode": type_code,
        "Name": "Hard bounce",
        "Tag": "Test",
        "MessageID": message_id,
        "Metadata": {"a_key": "a_value"},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, "
        "mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": to,
        "From": "sender@example.com",
        "BouncedAt": "2019-11-05T16:33:54.9070259Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Test subject",
        "Content": "Return-Path: <>",
    }
