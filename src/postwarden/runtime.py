"""The parts every running component shares: the settings, the database engine and the
signing secret. Built once per process by :func:`open_parts` (the CLI, the service, the
inbound worker process), passed down to whatever needs them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from postwarden.settings import Settings
from postwarden.store import accounts, db


@dataclass(frozen=True, slots=True)
class Parts:
    settings: Settings
    engine: Engine
    secret: bytes
    """Signs VERP and tracking tokens (``POSTWARDEN_SECRET_KEY``, else the instance's own)."""


def open_parts(settings: Settings, *, migrate: bool = True, url: str | None = None) -> Parts:
    """Connect (to ``url``, else the settings' database), bring the schema up to date, and
    find the signing secret."""
    engine = db.connect(url or settings.database_url)
    if migrate:
        db.migrate(engine)
    if settings.secret_key is not None:
        secret = settings.secret_key.get_secret_value().encode()
    else:
        with engine.begin() as conn:
            secret = accounts.instance_secret(conn)
    return Parts(settings, engine, secret)
