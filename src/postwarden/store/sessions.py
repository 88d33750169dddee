"""Web UI sessions kept on the server: signing out ends one whatever the browser kept.

The browser's (signed) cookie carries a random token; only its SHA-256 is stored, so the table
read by someone else is no way in. A session is good until it is revoked or it expires.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import Connection, delete, insert, or_, update

from postwarden.domain import clock
from postwarden.store import tables as t
from postwarden.store import users

LIFETIME = timedelta(hours=12)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def start(conn: Connection, user_id: int, lifetime: timedelta = LIFETIME) -> str:
    """A new session for the user; returns its token (the one copy there is)."""
    now = clock.now()
    s = t.sessions.c
    # the user's ended sessions are of no more use: this keeps the table to the live ones
    conn.execute(
        delete(t.sessions).where(
            s.user_id == user_id, or_(s.expires_at <= now, s.revoked_at.is_not(None))
        )
    )
    token = secrets.token_urlsafe(32)
    conn.execute(
        insert(t.sessions).values(
            user_id=user_id, token_hash=_hash(token), created_at=now, expires_at=now + lifetime
        )
    )
    return token


def user(conn: Connection, token: str) -> users.User | None:
    """The session's user, or None if the token is unknown, revoked or expired."""
    s = t.sessions.c
    row = conn.execute(
        users.select_users()
        .join(t.sessions, s.user_id == t.users.c.id)
        .where(s.token_hash == _hash(token), s.revoked_at.is_(None), s.expires_at > clock.now())
    ).first()
    return users.from_row(row) if row else None


def revoke(conn: Connection, token: str) -> None:
    """End the session (sign-out): its cookie is refused from now on."""
    conn.execute(
        update(t.sessions)
        .where(t.sessions.c.token_hash == _hash(token), t.sessions.c.revoked_at.is_(None))
        .values(revoked_at=clock.now())
    )
