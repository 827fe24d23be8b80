"""Delivery log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("recipient_index", sa.String(64), nullable=False),
        sa.Column("masked_recipient", sa.String(64), nullable=False),
        sa.Column("purpose", sa.SmallInteger(), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_deliveries_recipient_created", "deliveries", ["recipient_index", "created_at"]
    )


def downgrade() -> None:
    op.drop_table("deliveries")
