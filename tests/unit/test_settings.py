"""Settings from the environment: the email channel's group (``POSTWARDEN_SMTP_*``), its
secrets kept out of reprs, and the renamed variables refused rather than ignored."""

from __future__ import annotations

import pytest

from postwarden import errors
from postwarden.settings import Relay, Settings


def test_the_smtp_group_reads_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "POSTWARDEN_SMTP_RELAY": "smtps://mailer%40acme:p%40ss@relay.acme.test",
        "POSTWARDEN_SMTP_ROUTES": "corp.test=10.0.0.5:2525, .eu.corp.test=mx.eu:25",
        "POSTWARDEN_SMTP_DNS_SERVER": "127.0.0.1:5353",
        "POSTWARDEN_SMTP_CONNECT_TIMEOUT": "3.5",
        "POSTWARDEN_SMTP_PER_DOMAIN_CONCURRENCY": "8",
        "POSTWARDEN_SMTP_TLS_VERIFY": "true",
        "POSTWARDEN_SMTP_RELAY_TLS_VERIFY": "false",
        "POSTWARDEN_SMTP_TLS_CA_FILE": "/etc/ssl/private-ca.pem",
        "POSTWARDEN_HELO_NAME": "mta.acme.test",
    }.items():
        monkeypatch.setenv(name, value)
    smtp = Settings().smtp
    assert smtp.relay == Relay(
        host="relay.acme.test", port=465, implicit_tls=True, username="mailer@acme", password="p@ss"
    )
    assert smtp.routes == {"corp.test": ("10.0.0.5", 2525), ".eu.corp.test": ("mx.eu", 25)}
    assert smtp.dns_server == ("127.0.0.1", 5353)
    assert (smtp.connect_timeout, smtp.per_domain_concurrency) == (3.5, 8)
    assert (smtp.tls_verify, smtp.relay_tls_verify, smtp.tls_ca_file) == (
        True,
        False,
        "/etc/ssl/private-ca.pem",
    )
    assert Settings().helo_name == "mta.acme.test"


def test_the_relay_password_is_a_secret() -> None:
    settings = Settings(smtp={"relay": "smtp://user:hunter2@relay.test:2525"})
    relay = settings.smtp.relay
    assert relay is not None and (relay.host, relay.port, relay.implicit_tls) == (
        "relay.test",
        2525,
        False,
    )
    assert relay.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


def test_a_bad_relay_url_is_refused_without_its_password() -> None:
    with pytest.raises(errors.ConfigError) as refused:
        Settings(smtp={"relay": "http://user:hunter2@relay.test"})
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    "old", ["POSTWARDEN_ROUTES", "POSTWARDEN_DNS_SERVER", "POSTWARDEN_DATA_TIMEOUT"]
)
def test_a_renamed_variable_is_refused(monkeypatch: pytest.MonkeyPatch, old: str) -> None:
    """Ignored, a transport map set the old way would let mail go to the real MXs."""
    monkeypatch.setenv(old, "x")
    with pytest.raises(errors.ConfigError, match=f"{old} is now POSTWARDEN_SMTP_"):
        Settings()


def test_bad_routes_are_refused() -> None:
    with pytest.raises(errors.ConfigError, match="route is not domain=host:port"):
        Settings(smtp={"routes": "corp.test"})
