"""Accounts (tenants) and their API keys.

Keys are 256-bit random strings, so a SHA-256 digest is a safe and fast way to keep them: a
slow password hash buys nothing against guessing and would cost every request.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select, update

from postwarden import errors
from postwarden.domain import clock
from postwarden.store import db
from postwarden.store import tables as t

KEY_PREFIX = "pw_"

AUTH_TTL = 5.0
"""Seconds an authenticated key is trusted without reading the database again (a revoke in
this process takes effect at once; one made by another process within this time)."""

_auth_cache: dict[str, tuple[float, Account]] = {}
_auth_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    bounce_domain: str
    tracking: bool


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _account(row: object) -> Account:
    return Account(row.id, row.name, row.bounce_domain, row.tracking)  # type: ignore[attr-defined]


def create(conn: Connection, name: str, bounce_domain: str) -> tuple[Account, str]:
    """Create an account and its first API key; return both (the key is shown only once)."""
    name = name.strip()
    if not name:
        raise errors.InvalidInput("an account needs a name")
    if conn.scalar(select(t.accounts.c.id).where(t.accounts.c.name == name)) is not None:
        raise errors.Conflict(f"an account named {name!r} already exists")
    account_id = conn.scalar(
        insert(t.accounts)
        .values(name=name, bounce_domain=bounce_domain, tracking=True, created_at=clock.now())
        .returning(t.accounts.c.id)
    )
    assert account_id is not None
    return Account(account_id, name, bounce_domain, True), issue_key(conn, account_id)


def issue_key(conn: Connection, account_id: int, label: str = "") -> str:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        insert(t.api_keys).values(
            account_id=account_id, key_hash=_digest(key), label=label, created_at=clock.now()
        )
    )
    return key


def revoke_key(conn: Connection, key: str) -> None:
    result = conn.execute(
        update(t.api_keys)
        .where(t.api_keys.c.key_hash == _digest(key), t.api_keys.c.revoked_at.is_(None))
        .values(revoked_at=clock.now())
    )
    if result.rowcount == 0:
        raise errors.NotFound("no such active API key")
    forget_keys()


def forget_keys() -> None:
    """Drop the cache of authenticated keys (after a revoke or a change to an account)."""
    with _auth_lock:
        _auth_cache.clear()


def cached(key: str) -> Account | None:
    """The account of a key authenticated within :data:`AUTH_TTL` seconds, or None."""
    hit = _auth_cache.get(_digest(key))
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    return None


def authenticate_cached(conn: Connection, key: str) -> Account | None:
    """:func:`authenticate`, remembering a success for :data:`AUTH_TTL` seconds."""
    digest = _digest(key)
    account = authenticate(conn, key)
    if account is not None:
        with _auth_lock:
            if len(_auth_cache) > 10_000:
                _auth_cache.clear()
            _auth_cache[digest] = (time.monotonic() + AUTH_TTL, account)
    return account


def authenticate(conn: Connection, key: str) -> Account | None:
    row = conn.execute(
        select(t.accounts)
        .join(t.api_keys, t.api_keys.c.account_id == t.accounts.c.id)
        .where(t.api_keys.c.key_hash == _digest(key), t.api_keys.c.revoked_at.is_(None))
    ).first()
    return _account(row) if row else None


def by_name(conn: Connection, name: str) -> Account:
    row = conn.execute(select(t.accounts).where(t.accounts.c.name == name)).first()
    if row is None:
        raise errors.NotFound(f"no account named {name!r}")
    return _account(row)


def by_id(conn: Connection, account_id: int) -> Account:
    row = conn.execute(select(t.accounts).where(t.accounts.c.id == account_id)).first()
    if row is None:
        raise errors.NotFound(f"no account {account_id}")
    return _account(row)


def bounce_domains(conn: Connection) -> dict[str, int]:
    """Each account's bounce domain (lower case) -> account id: what the inbound server accepts."""
    rows = conn.execute(select(t.accounts.c.bounce_domain, t.accounts.c.id))
    return {domain.lower(): account_id for domain, account_id in rows}


def set_tracking(conn: Connection, account_id: int, on: bool) -> None:
    """Engagement tracking on or off for the account's messages that do not decide for
    themselves. Cached Accounts carry the flag: :func:`forget_keys` once this is committed."""
    conn.execute(update(t.accounts).where(t.accounts.c.id == account_id).values(tracking=on))


def count(conn: Connection) -> int:
    return conn.scalar(select(func.count()).select_from(t.accounts)) or 0


def instance_secret(conn: Connection) -> bytes:
    """The key that signs VERP and tracking tokens, made on first use and kept in the database."""
    query = select(t.instance.c.value).where(t.instance.c.key == "secret")
    value = conn.scalar(query)
    if value is None:
        db.insert_ignore(conn, t.instance, [{"key": "secret", "value": secrets.token_hex(32)}])
        value = conn.scalar(query)
    return bytes.fromhex(value)


def only_id(conn: Connection) -> int:
    account_id = conn.scalar(select(t.accounts.c.id).limit(1))
    if account_id is None:
        raise errors.NotFound("no account yet: create one with `postwarden account create NAME`")
    return account_id
