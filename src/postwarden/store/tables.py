"""The schema, in SQLAlchemy Core: one table per thing Postwarden keeps.

Indexes follow the mail log's filters (account + status/address/broadcast/category, newest
first) and the dispatcher's claim query (due messages by next attempt time).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from postwarden.domain.status import UNDELIVERED, Kind, Status

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
Id = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both databases (SQLite keeps no zone: naive means UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


When = UTCDateTime()


def _in(column: str, values: Iterable[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


_UNDELIVERED = _in("status", sorted(UNDELIVERED))


instance = Table(
    "instance",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("bounce_domain", String(255), nullable=False),
    Column("tracking", Boolean, nullable=False, default=True),
    Column("created_at", When, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("label", String(200), nullable=False, default=""),
    Column("created_at", When, nullable=False),
    Column("revoked_at", When),
)

contacts = Table(
    "contacts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False, default=""),
    Column("email", String(320)),
    Column("phone", String(32)),
    Column("preferences", JSON, nullable=False, default=dict),
    Column("created_at", When, nullable=False),
    Index(None, "account_id", "email"),
)

contents = Table(
    "contents",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("from_addr", String(320), nullable=False),
    Column("from_name", String(200), nullable=False, default=""),
    Column("subject", String(998), nullable=False),
    Column("text", Text),
    Column("html", Text),
    Column("headers", JSON, nullable=False, default=dict),
    Column("created_at", When, nullable=False),
)

broadcasts = Table(
    "broadcasts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("content_id", ForeignKey("contents.id"), nullable=False),
    Column("category", String(100), nullable=False, default=""),
    Column("total", Integer, nullable=False, default=0),
    Column("created_at", When, nullable=False),
    Index(None, "account_id", "created_at"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("broadcast_id", ForeignKey("broadcasts.id", ondelete="CASCADE")),
    Column("content_id", ForeignKey("contents.id"), nullable=False),
    Column("contact_id", ForeignKey("contacts.id", ondelete="SET NULL")),
    Column("resend_of", ForeignKey("messages.id", ondelete="SET NULL")),
    Column("channel", String(16), nullable=False, default="email"),
    Column("to_addr", String(320), nullable=False, default=""),
    Column("category", String(100), nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("reason", String(32)),
    Column("detail", Text),
    Column("flags", JSON, nullable=False, default=list),
    Column("metadata", JSON, nullable=False, default=dict),
    Column("idempotency_key", String(200)),
    Column("has_attachments", Boolean, nullable=False, default=False),
    Column("track", Boolean),  # engagement tracking for this message; None: the account's
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", When),
    Column("lease_until", When),
    Column("lease_owner", String(64)),
    Column("provider_message_id", String(255)),  # what a relay or provider calls it
    Column("created_at", When, nullable=False),
    Column("updated_at", When, nullable=False),
    Column("last_event_at", When),
    CheckConstraint(_in("status", Status), name="status"),
    UniqueConstraint("account_id", "idempotency_key"),
    Index(None, "account_id", "id"),
    Index(None, "account_id", "status", "id"),
    Index(None, "account_id", "to_addr", "id"),
    # Covering: day counts and date-range pages (newest first by created_at, id) read no table
    # rows; status + date serves the undelivered report.
    Index(None, "account_id", "created_at", "id", "status"),
    Index(None, "account_id", "status", "created_at"),
    Index(None, "account_id", "category", "id"),
    Index(None, "broadcast_id", "status"),
    Index(None, "broadcast_id", "id"),  # a broadcast's recipients, newest first (mail log)
    # Resends only (few): a message's resends, and the delivered ones from the index alone.
    Index(
        None,
        "resend_of",
        "status",
        sqlite_where=text("resend_of IS NOT NULL"),
        postgresql_where=text("resend_of IS NOT NULL"),
    ),
    Index(None, "channel", "status", "next_attempt_at"),  # each channel's claims
    # Receipts and webhooks name a message by its provider's id, per channel.
    Index(None, "channel", "provider_message_id"),
    # Undelivered only (a tenth): the undelivered count checks the originals of the delivered
    # resends here, from the index alone.
    Index(
        None,
        "id",
        "account_id",
        "created_at",
        "status",
        sqlite_where=text(_UNDELIVERED),
        postgresql_where=text(_UNDELIVERED),
    ),
)

undelivered_counts = Table(
    "undelivered_counts",
    metadata,
    Column("account_id", Id, nullable=False),
    Column("day", Date, nullable=False),  # the UTC day of the messages' created_at
    Column("status", String(16), nullable=False),
    Column("writer", Integer, nullable=False),
    Column("n", Integer, nullable=False),
    PrimaryKeyConstraint("account_id", "day", "status", "writer"),
)
"""How many messages of each account, UTC day and undelivered status there are: the sum of
``n`` over ``writer``. Kept by database triggers on ``messages`` (see the migration), so the
30-day undelivered count adds up at most 150 rows per writer instead of counting messages.

``writer`` is the PostgreSQL backend (``pg_backend_pid()``; 0 on SQLite) that wrote the row:
concurrent transactions never update the same row, so counting never makes writers wait on
each other or deadlock. Rows may hold negative ``n`` (a writer that deleted or moved messages).
No foreign key: the triggers write here while an account's messages are deleted with it."""

bodies = Table(
    "bodies",
    metadata,
    Column("message_id", ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
    Column("raw", LargeBinary, nullable=False),
)
"""The bytes of each outgoing message, built once at its first attempt."""

attachments = Table(
    "attachments",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary),
    Index(None, "message_id"),
)
"""Attachment names and sizes stay; ``data`` is deleted once the message has left."""

events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("source", String(32), nullable=False),
    Column("occurred_at", When, nullable=False),
    Column("recorded_at", When, nullable=False),
    Column("status_after", String(16), nullable=False),
    Column("dedupe_key", String(200)),
    Column("reason", String(32)),
    Column("hard", Boolean),
    Column("code", String(16)),
    Column("detail", Text),
    Column("data", JSON, nullable=False, default=dict),
    Column("inbound_id", ForeignKey("inbound_mails.id", ondelete="SET NULL")),
    CheckConstraint(_in("kind", Kind), name="kind"),
    UniqueConstraint("message_id", "dedupe_key"),
    Index(None, "message_id", "occurred_at"),
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("started_at", When, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("via", String(8), nullable=False),
    Column("remote", String(300)),
    Column("outcome", String(16), nullable=False),
    Column("code", Integer),
    Column("enhanced", String(16)),
    Column("text", Text, nullable=False, default=""),
    Column("transcript", Text, nullable=False, default=""),
    Index(None, "message_id"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("address", String(320), nullable=False),
    Column("category", String(100), nullable=False, default=""),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("source", String(32), nullable=False),
    Column("message_id", ForeignKey("messages.id", ondelete="SET NULL")),
    Column("created_at", When, nullable=False),
    UniqueConstraint("account_id", "address", "category"),
)
"""Addresses not to send to: hard bounces, complaints, unsubscribes (per category)."""

blocks = Table(
    "blocks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("pattern", String(320), nullable=False),
    Column("note", Text, nullable=False, default=""),
    Column("created_at", When, nullable=False),
    UniqueConstraint("account_id", "pattern"),
)
"""The account's block list: a whole address, or ``@domain`` for a domain."""

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(320), nullable=False),
    Column("detail", JSON, nullable=False, default=dict),
    Column("created_at", When, nullable=False),
    Index(None, "account_id", "created_at"),
)

inbound_mails = Table(
    "inbound_mails",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("received_at", When, nullable=False),
    Column("peer", String(100), nullable=False, default=""),
    Column("mail_from", String(320), nullable=False, default=""),
    Column("rcpt_to", JSON, nullable=False, default=list),
    Column("raw", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False, default="new"),
    Column("claimed_at", When),
    Column("kind", String(16)),
    Column("error", Text),
    Column("account_id", ForeignKey("accounts.id", ondelete="SET NULL")),
    # The message the mail names by a signed token, or (state "unverified") the one an address
    # alone points to: a candidate for review, never acted on.
    Column("message_id", ForeignKey("messages.id", ondelete="SET NULL")),
    Index(None, "state", "id"),
    Index(None, "message_id"),
)
"""Every mail the inbound server accepted, raw, stored before it is parsed."""

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("email", String(320), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("created_at", When, nullable=False),
    Column("last_login_at", When),
    Index(None, "account_id"),
)
"""People who sign in to the web UI; each one sees only its own account's data."""

sessions = Table(
    "sessions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", When, nullable=False),
    Column("expires_at", When, nullable=False),
    Column("revoked_at", When),
    Index(None, "user_id"),
)
"""Web UI sign-ins: the cookie carries a random token, kept here only as its SHA-256, so
signing out (or an operator) ends a session on the server, whatever the browser kept."""

sign_in_failures = Table(
    "sign_in_failures",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False),
    Column("client", String(64), nullable=False),
    Column("at", When, nullable=False),
    Index(None, "email", "at"),
    Index(None, "client", "at"),
    Index(None, "at"),
)
"""Recent failed sign-ins, by the email tried and the client address: what the sign-in rate
limit counts (rows older than its window are pruned as new ones arrive)."""


# region webhooks out and provider events in (store/webhooks.py, store/provider_events.py)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("url", String(2000), nullable=False),
    Column("description", String(200), nullable=False, default=""),
    Column("event_types", JSON, nullable=False, default=list),  # empty: every type
    Column("secret", String(100), nullable=False),
    Column("previous_secret", String(100)),  # still signed with until it expires
    Column("previous_expires_at", When),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("disabled_at", When),
    Column("disabled_reason", Text),
    Column("failing_since", When),  # the first failure since the last success
    Column("failures", Integer, nullable=False, default=0),  # attempts failed in a row
    Column("created_at", When, nullable=False),
    Index(None, "account_id"),
)
"""Where each account's webhooks go, the event types each one takes and its signing secrets."""

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("endpoint_id", ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False),
    Column("webhook_id", String(40), nullable=False),  # the webhook-id header, the same on retries
    Column("event_type", String(40), nullable=False),
    Column("payload", Text, nullable=False),  # the exact bytes signed and sent (UTF-8 JSON)
    Column("created_at", When, nullable=False),
    Column("state", String(16), nullable=False),  # pending, delivered, failed (dead letter)
    Column("attempts", Integer, nullable=False, default=0),
    Column("retry_since", When, nullable=False),  # retries stop 3 days after (a replay: anew)
    Column("next_attempt_at", When),
    Column("lease_until", When),
    Column("lease_owner", String(64)),
    Column("last_error", Text),
    Column("finished_at", When),
    Index(None, "state", "next_attempt_at"),  # the sender's claims
    Index(None, "endpoint_id", "created_at"),  # an endpoint's list, replay of a time range
)
"""The outbox: one row per event and endpoint, written in the transaction of the event."""

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("started_at", When, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("status_code", Integer),  # None: no HTTP answer (refused, timed out, not allowed)
    Column("response", Text, nullable=False, default=""),  # the first KB of the answer
    Column("error", Text),
    Index(None, "delivery_id"),
)

provider_hooks = Table(
    "provider_hooks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("provider", String(16), nullable=False),
    Column("token", String(64), nullable=False, unique=True),  # the last part of its URL
    Column("config", JSON, nullable=False, default=dict),  # keys, topics, credentials
    Column("created_at", When, nullable=False),
    UniqueConstraint("account_id", "provider"),
)
"""Each account's provider event URL (``/v1/providers/{provider}/events/{token}``) and what
verifies the provider's requests there."""

provider_events = Table(
    "provider_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("provider", String(16), nullable=False),
    Column("event_id", String(200), nullable=False),  # the provider's id: duplicates are one
    Column("event_type", String(64), nullable=False),  # the provider's own name for it
    Column("received_at", When, nullable=False),
    Column("occurred_at", When),
    Column("recipient", String(320)),
    Column("provider_message_id", String(255)),
    Column("state", String(16), nullable=False),  # applied, unmatched, ignored
    Column("message_id", ForeignKey("messages.id", ondelete="SET NULL")),
    Column("matched_by", String(16)),
    Column("detail", Text),
    Column("payload", JSON, nullable=False, default=dict),
    UniqueConstraint("account_id", "provider", "event_id"),
    Index(None, "account_id", "state", "received_at"),
    Index(None, "message_id"),
)
"""Every event a provider reported, kept whole: applied to its message, or kept for review."""

provider_nonces = Table(
    "provider_nonces",
    metadata,
    Column("provider", String(16), nullable=False),
    Column("nonce", String(200), nullable=False),
    Column("seen_at", When, nullable=False),
    PrimaryKeyConstraint("provider", "nonce"),
    Index(None, "seen_at"),
)
"""Signed request tokens seen (Mailgun's token, SendGrid's signature): a replay is refused."""

# endregion
