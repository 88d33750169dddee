"""inbound mails name their message

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 12:00:00.000000

``inbound_mails.message_id`` is the message an inbound mail names by a signed token or, for a
bounce without one ("unverified"), the message its address alone points to: shown for review
beside the mail, never acted on. Indexed, so that deleting old messages (retention) finds
the mails to unlink without a scan.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_mails", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
            )
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_inbound_mails_message_id_messages"),
            "messages",
            ["message_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index(
            batch_op.f("ix_inbound_mails_message_id"), ["message_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("inbound_mails", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbound_mails_message_id"))
        batch_op.drop_constraint(
            batch_op.f("fk_inbound_mails_message_id_messages"), type_="foreignkey"
        )
        batch_op.drop_column("message_id")
