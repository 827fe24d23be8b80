"""Delivery records carry a unique id, so a replay of the durable journal writes each once.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: the records written before have none (a unique index allows many NULLs).
    op.add_column("deliveries", sa.Column("delivery_id", sa.String(32), nullable=True))
    op.create_index("ix_deliveries_delivery_id", "deliveries", ["delivery_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_deliveries_delivery_id", table_name="deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("delivery_id")
