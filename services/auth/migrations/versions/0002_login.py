"""Login side: key rotation columns, sessions, refresh tokens, legacy credentials, audit.

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
    instant = sa.DateTime(timezone=True)
    with op.batch_alter_table("signing_keys") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("signs_from", instant, nullable=True))
    # Keys made before rotation existed: generations in creation order, signing since made.
    connection = op.get_bind()
    keys = sa.table(
        "signing_keys",
        sa.column("kid", sa.String),
        sa.column("created_at", instant),
        sa.column("generation", sa.Integer),
        sa.column("signs_from", instant),
    )
    rows = connection.execute(sa.select(keys.c.kid).order_by(keys.c.created_at, keys.c.kid)).all()
    for generation, row in enumerate(rows, start=1):
        connection.execute(
            keys.update()
            .where(keys.c.kid == row.kid)
            .values(generation=generation, signs_from=keys.c.created_at)
        )
    with op.batch_alter_table("signing_keys") as batch:
        batch.alter_column("generation", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("signs_from", existing_type=instant, nullable=False)
        batch.create_unique_constraint("uq_signing_keys_generation", ["generation"])

    op.create_table(
        "sessions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("person_id", sa.String(32), nullable=False),
        sa.Column("province", sa.String(2), nullable=False),
        sa.Column("identity", sa.Text(), nullable=False),
        sa.Column("methods", sa.String(64), nullable=False),
        sa.Column("client_app", sa.String(16), nullable=False),
        sa.Column("created_at", instant, nullable=False),
        sa.Column("last_issued_at", instant, nullable=False),
        sa.Column("revoked_at", instant, nullable=True),
        sa.Column("revoked_reason", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["persons.id"],
            name="fk_sessions_person_id_persons",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_sessions_person_id", "sessions", ["person_id"])
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(32), nullable=False),
        sa.Column("issued_at", instant, nullable=False),
        sa.Column("expires_at", instant, nullable=False),
        sa.Column("used_at", instant, nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name="pk_refresh_tokens"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_refresh_tokens_session_id_sessions",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_refresh_tokens_session_id", "refresh_tokens", ["session_id"])
    op.create_table(
        "legacy_credentials",
        sa.Column("enterprise_code", sa.String(20), nullable=False),
        sa.Column("person_id", sa.String(32), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("imported_at", instant, nullable=False),
        sa.PrimaryKeyConstraint("enterprise_code", name="pk_legacy_credentials"),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["persons.id"],
            name="fk_legacy_credentials_person_id_persons",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_legacy_credentials_person_id", "legacy_credentials", ["person_id"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("occurred_at", instant, nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(40), nullable=True),
        sa.Column("person_id", sa.String(32), nullable=True),
        sa.Column("session_id", sa.String(32), nullable=True),
        sa.Column("entry", sa.SmallInteger(), nullable=True),
        sa.Column("province", sa.String(2), nullable=True),
        sa.Column("method", sa.String(16), nullable=True),
        sa.Column("masked_account", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_occurred_at", "audit_events", ["occurred_at"])
    op.create_index("ix_audit_events_person_id", "audit_events", ["person_id"])


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("legacy_credentials")
    op.drop_table("refresh_tokens")
    op.drop_table("sessions")
    with op.batch_alter_table("signing_keys") as batch:
        batch.drop_constraint("uq_signing_keys_generation", type_="unique")
        batch.drop_column("signs_from")
        batch.drop_column("generation")
