"""Configuration from ``POSTWARDEN_*`` environment variables: the only module reading them.

``Settings()`` is built once by the CLI and passed down; tests construct it directly. A channel's
settings are a group of their own (``settings.smtp``), read from ``POSTWARDEN_SMTP_<FIELD>``
(``POSTWARDEN_SMTP_RELAY``, ``POSTWARDEN_SMTP_TLS_VERIFY``...) and handed to the channel whole.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from postwarden import errors


def parse_hostport(value: str, default_port: int = 25) -> tuple[str, int]:
    host, _, port = value.strip().rpartition(":")
    if not host:
        return value.strip(), default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError as exc:
        raise errors.ConfigError(f"not host:port: {value!r}") from exc


def parse_routes(value: str) -> dict[str, tuple[str, int]]:
    """``domain=host:port,...`` (``;`` also separates) -> {domain: (host, port)}."""
    routes: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in value.replace(";", ",").split(","))):
        domain, sep, target = item.partition("=")
        if not sep or not domain or not target:
            raise errors.ConfigError(f"route is not domain=host:port: {item!r}")
        routes[domain.strip().lower().rstrip(".")] = parse_hostport(target)
    return routes


class Relay(BaseModel):
    """A smarthost, given as ``smtp://user:pass@host:port`` (STARTTLS when offered, port 587 by
    default) or ``smtps://`` (implicit TLS, 465); the password never shows in a repr or a log."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    implicit_tls: bool = False
    username: str | None = None
    password: SecretStr = SecretStr("")

    @classmethod
    def parse(cls, url: str) -> Relay:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            # Not the URL itself in the message: it holds the password.
            raise errors.ConfigError(
                "the relay must look like smtp://user:pass@host:port or smtps://..."
            )
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit else 587),
            implicit_tls=implicit,
            username=unquote(parts.username) if parts.username else None,
            password=SecretStr(unquote(parts.password or "")),
        )


class SMTPSettings(BaseModel):
    """How the email channel reaches recipients (``POSTWARDEN_SMTP_<FIELD>``). Every field has a
    working default for direct-to-MX delivery."""

    model_config = ConfigDict(frozen=True)

    relay: Annotated[Relay | None, NoDecode] = None
    """``POSTWARDEN_SMTP_RELAY``: see :class:`Relay`; unset: deliver straight to each MX."""
    routes: Annotated[dict[str, tuple[str, int]], NoDecode] = Field(default_factory=dict)
    """Transport map ``domain=host:port,...``: the host used as that domain's MX, bypassing DNS;
    a key starting with "." matches subdomains (like Postfix ``transport_maps``)."""
    dns_server: Annotated[tuple[str, int] | None, NoDecode] = None
    """``host:port`` of the DNS server for MX look-ups; unset: the system resolver."""
    connect_timeout: float = 10.0  # TCP connect + greeting
    command_timeout: float = 30.0  # EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET, QUIT
    data_timeout: float = 120.0  # each reply of DATA (the 354 and the final one)
    per_domain_concurrency: int = Field(4, ge=1)
    """Connections at once per next hop (a recipient domain, or the relay)."""
    messages_per_connection: int = Field(100, ge=1)
    tls_verify: bool = False
    """Verify MX certificates; False: opportunistic STARTTLS, plain text if TLS fails."""
    relay_tls_verify: bool = True
    tls_ca_file: str | None = None
    """Extra CA bundle for verification (a private relay's CA)."""
    mx_port: int = 25  # port used for hosts found in DNS (tests and demos change it)
    dns_timeout: float = 5.0
    mx_cache_ttl: float = 300.0  # upper bound for caching an MX answer (the record TTL wins)
    max_mx_attempts: int = 5  # addresses tried per connection before giving up

    @field_validator("relay", mode="before")
    @classmethod
    def _relay(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return Relay.parse(value) if value.strip() else None
        return value

    @field_validator("routes", mode="before")
    @classmethod
    def _routes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_routes(value)
        if isinstance(value, dict):
            return {str(k).lower().rstrip("."): v for k, v in value.items()}
        return value

    @field_validator("dns_server", mode="before")
    @classmethod
    def _dns_server(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_hostport(value, 53) if value.strip() else None
        return value


class SMSSettings(BaseModel):
    """How the SMS channel reaches handsets (``POSTWARDEN_SMS_<FIELD>``): one provider for the
    instance; unset ``provider``: no SMS channel."""

    model_config = ConfigDict(frozen=True)

    provider: SecretStr | None = None
    """``twilio://SID:TOKEN@host?from=+15550001111``, ``vonage://KEY:SECRET@host?from=Acme`` or
    ``smpp://system_id:password@host:2775?source=Acme``; unset: no SMS channel."""
    default_region: str = "US"
    """Region for numbers written without a country code (ISO 3166 alpha-2)."""
    mobile_only: bool = True
    """Refuse numbers that cannot be mobiles (landlines, toll-free): providers need a mobile."""
    max_segments: int = Field(10, ge=1)
    """A longer text is refused (providers cap concatenation; each segment is billed)."""
    callback_url: str = "http://127.0.0.1:8025/v1/webhooks"
    """Where providers post receipts (Twilio status callbacks, Vonage DLRs), as they reach it."""
    callback_max_age: float = 7 * 86400.0
    """A status callback for a message sent longer ago than this is refused as stale."""
    signature_secret: SecretStr | None = None
    """Vonage's signature secret: delivery receipts must then carry a valid ``sig``."""
    signature_method: str = "sha256"
    """Vonage's signature method, as set in its dashboard: md5hash, md5, sha1, sha256, sha512."""
    concurrency: int = Field(8, ge=1)
    """HTTP providers: requests in flight at once."""
    window: int = Field(10, ge=1)
    """SMPP: submit_sm in flight without their submit_sm_resp."""
    timeout: float = 30.0
    """Seconds a provider request (or an SMPP response) may take."""


class HTTPSettings(BaseModel):
    """Postwarden's own outgoing HTTP requests (webhooks, Amazon SNS certificates and
    subscription confirmations): ``POSTWARDEN_HTTP_<FIELD>``. A request goes only to the address
    its host resolved to, once that address is checked: loopback, private, link-local and other
    non-public addresses are refused (no SSRF) unless ``allow_private`` says otherwise."""

    model_config = ConfigDict(frozen=True)

    allow_private: bool = False
    """Let requests reach loopback, private and link-local addresses (tests, a receiver on the
    same private network)."""
    resolve: Annotated[dict[tuple[str, int], tuple[str, int]], NoDecode] = Field(
        default_factory=dict
    )
    """``host:port=address:port,...``: connect to that address for that host and port instead of
    resolving it (like curl's ``--resolve``); the name is still the one TLS verifies."""
    ca_file: str | None = None
    """Extra CA bundle trusted for HTTPS (a private receiver's CA)."""

    @field_validator("resolve", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        if isinstance(value, str):
            pairs = {}
            for item in filter(None, (p.strip() for p in value.replace(";", ",").split(","))):
                name, sep, target = item.partition("=")
                if not sep:
                    raise errors.ConfigError(f"not host:port=address:port: {item!r}")
                pairs[parse_hostport(name.lower(), 443)] = parse_hostport(target, 443)
            return pairs
        return value


class WebhookSettings(BaseModel):
    """The webhook sender (``POSTWARDEN_WEBHOOKS_<FIELD>``)."""

    model_config = ConfigDict(frozen=True)

    timeout: float = 10.0
    """Seconds one attempt may take, connection and answer included."""
    concurrency: int = Field(4, ge=1)
    """Requests at once per endpoint: a slow or dead endpoint holds up only its own."""
    batch_size: int = Field(200, ge=1)
    min_backoff: float = 5.0
    max_backoff: float = 6 * 3600.0
    retry_for: float = 3 * 86400.0
    """Seconds a webhook is retried (from its creation or replay) before it is a dead letter."""
    disable_after: float = 3 * 86400.0
    """An endpoint whose every attempt failed for this long (and ``disable_failures`` times in a
    row) is disabled, with a notice on the dashboard."""
    disable_failures: int = Field(20, ge=1)
    secret_overlap: float = 86400.0
    """Seconds the previous secret still signs after a rotation."""
    poll_interval: float = 0.5


_RENAMED = {
    f"POSTWARDEN_{old}": f"POSTWARDEN_SMTP_{old}"
    for old in (
        "ROUTES",
        "DNS_SERVER",
        "CONNECT_TIMEOUT",
        "COMMAND_TIMEOUT",
        "DATA_TIMEOUT",
        "PER_DOMAIN_CONCURRENCY",
        "MESSAGES_PER_CONNECTION",
    )
}
"""Variables of the email channel that moved into its group: refused rather than ignored, so
that a transport map set the old way never lets mail go out to the real MXs unnoticed."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="POSTWARDEN_",
        extra="ignore",
        # POSTWARDEN_SMTP_TLS_VERIFY -> smtp.tls_verify: one split, after the group's name.
        env_nested_delimiter="_",
        env_nested_max_split=1,
    )

    database_url: str = "sqlite:///postwarden.db"
    secret_key: SecretStr | None = None
    """Signs VERP and tracking tokens; generated and kept in the database when unset."""
    helo_name: str = Field(default_factory=socket.getfqdn)
    """This host's name in SMTP: the outbound EHLO and the inbound server's greeting."""

    # Channels (each one's own group)
    smtp: SMTPSettings = Field(default_factory=SMTPSettings)
    sms: SMSSettings = Field(default_factory=SMSSettings)

    # Webhooks out, and what Postwarden's own HTTP requests may reach
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    http: HTTPSettings = Field(default_factory=HTTPSettings)

    # Provider events in (/v1/providers/...)
    provider_max_age: float = 300.0
    """Seconds a signed provider request (Mailgun, SendGrid) stays acceptable."""

    # Queue and retries
    batch_size: int = 500
    lease_seconds: float = 120.0
    poll_interval: float = 0.5
    min_backoff: float = 60.0
    max_backoff: float = 4000.0
    max_lifetime: float = 5 * 86400.0
    """A message still deferred this long after it was accepted ends as bounced/expired."""

    # Suppression policy
    soft_bounce_limit: int = 5
    soft_bounce_days: int = 30

    # Intake
    default_bounce_domain: str = "bounces.postwarden.localhost"
    max_message_bytes: int = 10 * 1024 * 1024
    max_broadcast_recipients: int = 200_000

    # Inbound SMTP (bounces, complaints)
    inbound_host: str = "127.0.0.1"
    inbound_port: int = 2525
    inbound_max_bytes: int = 10 * 1024 * 1024
    inbound_max_connections: int = 100
    inbound_max_connections_per_client: int = 50
    """Open connections one client address may hold (the rest get 421, try again later); as
    Postfix's smtpd_client_connection_count_limit, half the server's."""
    inbound_timeout: float = 60.0

    # Engagement tracking (opens, clicks, one-click unsubscribe)
    tracking_base_url: str = "http://127.0.0.1:8025"
    """Where the /t/ routes are served (the tracking hostname, as recipients reach it)."""
    transactional_categories: str = "transactional,security,password"
    """Comma list: no List-Unsubscribe on these, and an unsubscribe never suppresses them."""
    track_text_links: bool = False
    """Also rewrite bare URLs in plain-text bodies through the click redirect."""

    # Web
    trusted_proxies: str = "127.0.0.1,::1"
    """Comma list of reverse proxies (addresses or CIDR networks) whose X-Forwarded-Proto and
    X-Forwarded-For are believed: whether the UI was reached over https (its cookie is then
    Secure) and the client's address (the sign-in rate limit). Empty: none."""

    @model_validator(mode="before")
    @classmethod
    def _no_renamed_variables(cls, values: Any) -> Any:
        for old, new in _RENAMED.items():
            if old in os.environ:
                raise errors.ConfigError(f"{old} is now {new}: rename it")
        return values

    @property
    def transactional(self) -> frozenset[str]:
        return _categories(self.transactional_categories)


@lru_cache(maxsize=16)
def _categories(text: str) -> frozenset[str]:
    """Cached by the text, not on the settings object: read for every message the dispatcher
    builds, and a copy of the settings with other categories must not see the old ones."""
    return frozenset(c.strip() for c in text.split(",") if c.strip())
