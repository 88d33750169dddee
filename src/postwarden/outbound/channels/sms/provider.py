"""What every SMS provider adapter offers the channel, and how one is configured.

``POSTWARDEN_SMS_PROVIDER`` is one URL: ``twilio://SID:TOKEN@host``, ``vonage://KEY:SECRET@host``
or ``smpp://system_id:password@host:2775``; ``?from=`` (or ``?source=``) is the default sender.
HTTP providers are reached over HTTPS, except on a loopback host (the testing servers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import SecretStr

from postwarden import errors
from postwarden.domain import clock, receipts, sms
from postwarden.outbound.channels import base

Kind = Literal["twilio", "vonage", "smpp"]
_DEFAULT_PORT = {"twilio": 443, "vonage": 443, "smpp": 2775}
_LOOPBACK = ("127.", "localhost", "::1", "[::1]")


@dataclass(frozen=True, slots=True)
class SMS:
    """An :class:`~postwarden.outbound.channels.base.Outgoing` payload of the SMS channel."""

    text: str
    sender: str
    encoded: sms.Encoded


@dataclass(frozen=True)
class Config:
    kind: Kind
    user: str  # Twilio account SID, Vonage API key, SMPP system_id
    secret: SecretStr = field(repr=False)
    host: str
    port: int
    sender: str  # the default sender: a number or an alphanumeric id ("" = none)
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        scheme = "http" if self.host.startswith(_LOOPBACK) else "https"
        default = 80 if scheme == "http" else 443
        port = (
            ""
            if self.port == default or (self.port == 443 and scheme == "https")
            else f":{self.port}"
        )
        return f"{scheme}://{self.host}{port}"

    @property
    def remote(self) -> str:
        return f"{self.host}:{self.port}"


def parse_url(url: str) -> Config:
    """A provider URL, checked; ConfigError says what is wrong with it (never the secret)."""
    parts = urlsplit(url.strip())
    kind = parts.scheme.lower()
    if kind not in _DEFAULT_PORT:
        raise errors.ConfigError(
            f"SMS provider scheme {kind!r} is not one of twilio://, vonage://, smpp://"
        )
    if not parts.hostname or not parts.username or not parts.password:
        raise errors.ConfigError(f"SMS provider URL needs {kind}://USER:SECRET@host")
    try:
        port = parts.port or _DEFAULT_PORT[kind]
    except ValueError as exc:
        raise errors.ConfigError("SMS provider URL has an invalid port") from exc
    options = dict(parse_qsl(parts.query))
    sender = options.pop("from", "") or options.pop("source", "")
    return Config(
        kind,  # type: ignore[arg-type]
        unquote(parts.username),
        SecretStr(unquote(parts.password)),
        parts.hostname,
        port,
        sender,
        options,
    )


class Provider(Protocol):
    """One SMS provider behind the channel."""

    name: Kind  # also the evidence's ``via``
    default_sender: str

    async def submit(self, item: base.Outgoing[SMS]) -> base.Verdict:
        """Hand one text to the provider; a classified verdict, never an exception."""
        ...

    async def aclose(self) -> None: ...


def evidence(name: str, remote: str, started: datetime, transcript: list[str]) -> base.Evidence:
    duration = int((clock.now() - started).total_seconds() * 1000)
    return base.Evidence(started, duration, name, remote, "\n".join(transcript))


def refused(
    item: base.Outgoing[SMS],
    meaning: receipts.Meaning,
    *,
    code: str | None,
    detail: str,
    evidence: base.Evidence | None,
    reply_code: int | None = None,
    retry_after: float | None = None,
) -> base.Verdict:
    """The verdict for a provider's refusal, as the error table reads its code. A STOP
    (``meaning.unsubscribed``) is a soft bounce here: the recorder reads the code again
    (:func:`postwarden.domain.receipts.explain`) to suppress the number as unsubscribed."""
    deferred = meaning.outcome == "deferred"
    return base.Verdict(
        item.message_id,
        meaning.outcome,
        meaning.reason,
        False if deferred else meaning.hard,
        code,
        reply_code,
        detail,
        retry_after,
        None,
        evidence,
    )
