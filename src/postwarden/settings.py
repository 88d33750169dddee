"""Configuration from ``POSTWARDEN_*`` environment variables: the only module reading them.

``Settings()`` is built once by the CLI and passed down; tests construct it directly.
"""

from __future__ import annotations

import socket
from functools import lru_cache

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from postwarden import errors


def parse_hostport(value: str, default_port: int = 25) -> tuple[str, int]:
    host, _, port = value.strip().rpartition(":")
    if not host:
        return value.strip(), default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError as exc:
        raise errors.ConfigError(f"not host:port: {value!r}") from exc


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POSTWARDEN_", extra="ignore")

    database_url: str = "sqlite:///postwarden.db"
    secret_key: SecretStr | None = None
    """Signs VERP and tracking tokens; generated and kept in the database when unset."""

    # Outbound SMTP
    smtp_relay: str | None = None
    """``smtp://user:pass@host:port`` (or ``smtps://``); unset: deliver straight to each MX."""
    routes: str = ""
    """Transport map ``domain=host:port,...``: the host to use as that domain's MX."""
    dns_server: str | None = None
    """``host:port`` of the DNS server for MX look-ups; unset: the system resolver."""
    helo_name: str = Field(default_factory=socket.getfqdn)
    connect_timeout: float = 10.0
    command_timeout: float = 30.0
    data_timeout: float = 120.0
    per_domain_concurrency: int = 4
    messages_per_connection: int = 100

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

    @field_validator("routes")
    @classmethod
    def _routes_parse(cls, value: str) -> str:
        cls.parse_routes(value)
        return value

    @staticmethod
    def parse_routes(value: str) -> dict[str, tuple[str, int]]:
        routes: dict[str, tuple[str, int]] = {}
        for item in filter(None, (part.strip() for part in value.replace(";", ",").split(","))):
            domain, sep, target = item.partition("=")
            if not sep or not domain or not target:
                raise errors.ConfigError(f"route is not domain=host:port: {item!r}")
            routes[domain.strip().lower()] = parse_hostport(target)
        return routes

    @property
    def route_map(self) -> dict[str, tuple[str, int]]:
        return self.parse_routes(self.routes)

    @property
    def dns_nameserver(self) -> tuple[str, int] | None:
        return parse_hostport(self.dns_server, 53) if self.dns_server else None

    @property
    def transactional(self) -> frozenset[str]:
        return _categories(self.transactional_categories)


@lru_cache(maxsize=16)
def _categories(text: str) -> frozenset[str]:
    """Cached by the text, not on the settings object: read for every message the dispatcher
    builds, and a copy of the settings with other categories must not see the old ones."""
    return frozenset(c.strip() for c in text.split(",") if c.strip())
