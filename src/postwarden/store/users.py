"""Admin users of the web UI: one email and password each, bound to one account.

Passwords are kept as argon2id hashes (argon2-cffi's defaults); a wrong email costs as much
time as a wrong password, so sign-in does not tell which addresses exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, Engine, Select, delete, insert, select, update

from postwarden import errors
from postwarden.domain import clock
from postwarden.store import db, suppression
from postwarden.store import tables as t

log = logging.getLogger(__name__)

MIN_PASSWORD = 10

_hasher = PasswordHasher()
_DUMMY = _hasher.hash("postwarden-no-such-user")


@dataclass(frozen=True, slots=True)
class User:
    id: int
    account_id: int
    email: str
    account_name: str


def _normalize(email: str) -> str:
    return email.strip().lower()


def create(conn: Connection, account_id: int, email: str, password: str) -> User:
    """Create an admin user of the account; Conflict if the email is taken."""
    email = _normalize(email)
    if "@" not in email or len(email) > 320:
        raise errors.InvalidInput(f"not an email address: {email!r}")
    if len(password) < MIN_PASSWORD:
        raise errors.InvalidInput(f"the password needs at least {MIN_PASSWORD} characters")
    if conn.scalar(select(t.users.c.id).where(t.users.c.email == email)) is not None:
        raise errors.Conflict(f"a user {email} already exists")
    user_id = conn.scalar(
        insert(t.users)
        .values(
            account_id=account_id,
            email=email,
            password_hash=_hasher.hash(password),
            created_at=clock.now(),
        )
        .returning(t.users.c.id)
    )
    assert user_id is not None
    found = by_id(conn, user_id)
    assert found is not None
    return found


def select_users() -> Select[Any]:
    """The columns of :class:`User` (and the password hash), users joined to accounts."""
    return select(
        t.users.c.id,
        t.users.c.account_id,
        t.users.c.email,
        t.users.c.password_hash,
        t.accounts.c.name.label("account_name"),
    ).join(t.accounts, t.accounts.c.id == t.users.c.account_id)


def from_row(row: Any) -> User:
    return User(row.id, row.account_id, row.email, row.account_name)


def by_id(conn: Connection, user_id: int) -> User | None:
    row = conn.execute(select_users().where(t.users.c.id == user_id)).first()
    return from_row(row) if row else None


def _check(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# region sign-in with a rate limit

WINDOW = timedelta(minutes=15)
PER_EMAIL = 10
"""Failed sign-ins for one email address (existing or not) within :data:`WINDOW` before
further tries are refused unchecked: guessing a password takes years, not minutes."""
PER_CLIENT = 50
"""Failed sign-ins from one client address within :data:`WINDOW`: higher than
:data:`PER_EMAIL`, since an office behind one address has several operators."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Too many failed sign-ins: no password is checked before ``retry_at``."""

    retry_at: datetime
    by: Literal["email", "client"]


def _retry_at(
    conn: Connection, column: Any, value: str, limit: int, now: datetime
) -> datetime | None:
    """When the ``limit``-th latest failure leaves the window, if ``limit`` are in it."""
    times = conn.scalars(
        select(t.sign_in_failures.c.at)
        .where(column == value, t.sign_in_failures.c.at > now - WINDOW)
        .order_by(t.sign_in_failures.c.at.desc())
        .limit(limit)
    ).all()
    return times[-1] + WINDOW if len(times) >= limit else None


def throttled(conn: Connection, email: str, client: str, now: datetime) -> Refused | None:
    """Whether sign-ins for this email or from this client are refused for now, and until when."""
    f = t.sign_in_failures.c
    by_email = _retry_at(conn, f.email, _normalize(email), PER_EMAIL, now)
    by_client = _retry_at(conn, f.client, client[:64], PER_CLIENT, now)
    if by_email and (by_client is None or by_email >= by_client):
        return Refused(by_email, "email")
    return Refused(by_client, "client") if by_client else None


def sign_in(engine: Engine, email: str, password: str, client: str) -> User | Refused | None:
    """The user if the password is right; :class:`Refused` while this email or client address
    has too many recent failures (the password is then not even checked); None if wrong.

    Three steps, so argon2 (tens of milliseconds of CPU) never runs inside a write transaction
    (on SQLite that would hold every writer, API intake included, behind it): read the user and
    the recent failures on a read-only connection, check the password holding no connection,
    then one short write: the sign-in time, or the failure (logged, and audited in the user's
    account when the address is a user's)."""
    email, client = _normalize(email)[:320], client[:64]
    now = clock.now()
    with db.reader(engine).connect() as conn:
        refused = throttled(conn, email, client, now)
        row = (
            None
            if refused
            else conn.execute(select_users().where(t.users.c.email == email)).first()
        )
    if refused:
        log.warning(
            "sign-in refused for %r from %s: too many failures (by %s), until %s",
            email,
            client,
            refused.by,
            refused.retry_at.isoformat(timespec="seconds"),
        )
        return refused
    right = _check(row.password_hash if row else _DUMMY, password) and row is not None
    rehashed = (
        _hasher.hash(password) if right and _hasher.check_needs_rehash(row.password_hash) else None
    )
    with engine.begin() as conn:
        if right:
            values: dict[str, object] = {"last_login_at": now}
            if rehashed:
                values["password_hash"] = rehashed
            conn.execute(update(t.users).where(t.users.c.id == row.id).values(**values))
            conn.execute(delete(t.sign_in_failures).where(t.sign_in_failures.c.email == email))
            return from_row(row)
        conn.execute(delete(t.sign_in_failures).where(t.sign_in_failures.c.at <= now - WINDOW))
        conn.execute(insert(t.sign_in_failures).values(email=email, client=client, at=now))
        if row is not None:
            suppression.audit(conn, row.account_id, f"web {client}", "user.sign_in_failed", email)
    log.warning("sign-in failed for %r from %s", email, client)
    return None


# endregion
