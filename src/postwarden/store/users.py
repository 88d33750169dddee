"""Admin users of the web UI: one email and password each, bound to one account.

Passwords are kept as argon2id hashes (argon2-cffi's defaults); a wrong email costs as much
time as a wrong password, so sign-in does not tell which addresses exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, Select, insert, select, update

from postwarden import errors
from postwarden.domain import clock
from postwarden.store import tables as t

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


def _query() -> Select[Any]:
    return select(
        t.users.c.id,
        t.users.c.account_id,
        t.users.c.email,
        t.users.c.password_hash,
        t.accounts.c.name.label("account_name"),
    ).join(t.accounts, t.accounts.c.id == t.users.c.account_id)


def by_id(conn: Connection, user_id: int) -> User | None:
    row = conn.execute(_query().where(t.users.c.id == user_id)).first()
    return User(row.id, row.account_id, row.email, row.account_name) if row else None


def verify(conn: Connection, email: str, password: str) -> User | None:
    """The user if the password is right (recording the sign-in), else None."""
    row = conn.execute(_query().where(t.users.c.email == _normalize(email))).first()
    try:
        _hasher.verify(row.password_hash if row else _DUMMY, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    values: dict[str, object] = {"last_login_at": clock.now()}
    if _hasher.check_needs_rehash(row.password_hash):
        values["password_hash"] = _hasher.hash(password)
    conn.execute(update(t.users).where(t.users.c.id == row.id).values(**values))
    return User(row.id, row.account_id, row.email, row.account_name)
