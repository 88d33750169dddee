"""Standard Webhooks signatures (https://www.standardwebhooks.com), by the ``standardwebhooks``
package: ``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` under each
secret in use, space-separated: during a secret's rotation both the new and the previous
secret sign, so a receiver holding either one accepts the webhook."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

from standardwebhooks.webhooks import Webhook


@lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    return Webhook(secret)


def headers(
    webhook_id: str, timestamp: datetime, body: bytes, secrets: Sequence[str]
) -> dict[str, str]:
    """The headers of one attempt (the same ``webhook-id`` on every retry)."""
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(
            _signer(secret).sign(webhook_id, timestamp, body) for secret in secrets
        ),
    }
