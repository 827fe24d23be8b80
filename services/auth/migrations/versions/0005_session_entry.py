"""Sessions keep their entry beside the identity, so a refresh is one statement that
writes its audit row (entry included) without decoding the identity first.

Revision ID: 0005
Revises: 0004
"""

import base64

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("entry", sa.SmallInteger, nullable=True))
    from etax.binding.v1 import binding_pb2  # noqa: PLC0415 - generated code, at run time

    sessions = sa.table(
        "sessions", sa.column("id", sa.String), sa.column("identity"), sa.column("entry")
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(sessions.c.id, sessions.c.identity).where(sessions.c.entry.is_(None))
    ).all()
    for session_id, identity in rows:
        entry = binding_pb2.Identity.FromString(base64.b64decode(identity)).entry
        connection.execute(
            sa.update(sessions).where(sessions.c.id == session_id).values(entry=entry)
        )


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("entry")
