"""Audit events carry a unique id, so a replay of the durable journal writes each once.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: the events written before have none (a unique index allows many NULLs).
    op.add_column("audit_events", sa.Column("event_id", sa.String(32), nullable=True))
    op.create_index("ix_audit_events_event_id", "audit_events", ["event_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_audit_events_event_id", table_name="audit_events")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("event_id")
