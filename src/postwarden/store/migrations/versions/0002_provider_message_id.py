"""provider message id; claims per channel

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 10:00:00.000000

``messages.provider_message_id`` is what a relay or SMS provider calls a message (its queue id,
its message SID), indexed per channel so that later receipts and webhooks find their message.
The claim index leads with the channel: each channel's dispatcher lane claims only its own
rows, and must not walk past another channel's backlog to find them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_message_id", sa.String(length=255), nullable=True))
        batch_op.drop_index(batch_op.f("ix_messages_status_next_attempt_at"))
        batch_op.create_index(
            batch_op.f("ix_messages_channel_status_next_attempt_at"),
            ["channel", "status", "next_attempt_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_messages_channel_provider_message_id"),
            ["channel", "provider_message_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_channel_provider_message_id"))
        batch_op.drop_index(batch_op.f("ix_messages_channel_status_next_attempt_at"))
        batch_op.create_index(
            batch_op.f("ix_messages_status_next_attempt_at"),
            ["status", "next_attempt_at"],
            unique=False,
        )
        batch_op.drop_column("provider_message_id")
