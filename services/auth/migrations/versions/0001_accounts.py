"""Persons, phones, offline real-name collections, signing keys.

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
    instant = sa.DateTime(timezone=True)
    op.create_table(
        "persons",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("document_type", sa.Integer(), nullable=False),
        sa.Column("document_number", sa.Text(), nullable=False),
        sa.Column("document_index", sa.String(64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("overseas", sa.Boolean(), nullable=False),
        sa.Column("real_name_level", sa.SmallInteger(), nullable=False),
        sa.Column("face_verified_at", instant, nullable=True),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("email_index", sa.String(64), nullable=True),
        sa.Column("username", sa.String(20), nullable=True),
        sa.Column("username_key", sa.String(20), nullable=True),
        sa.Column("username_changed_at", instant, nullable=True),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("password_changed_at", instant, nullable=True),
        sa.Column("default_phone_id", sa.String(32), nullable=True),
        sa.Column("registered_province", sa.String(2), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("created_at", instant, nullable=False),
        sa.Column("updated_at", instant, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_persons"),
        sa.UniqueConstraint("document_index", name="uq_persons_document_index"),
        sa.UniqueConstraint("username_key", name="uq_persons_username_key"),
    )
    op.create_index("ix_persons_email_index", "persons", ["email_index"])
    op.create_table(
        "phones",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("person_id", sa.String(32), nullable=False),
        sa.Column("number", sa.Text(), nullable=False),
        sa.Column("number_index", sa.String(64), nullable=False),
        sa.Column("verified_at", instant, nullable=True),
        sa.Column("created_at", instant, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_phones"),
        sa.ForeignKeyConstraint(
            ["person_id"], ["persons.id"], name="fk_phones_person_id_persons", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("number_index", name="uq_phones_number_index"),
    )
    op.create_index("ix_phones_person_id", "phones", ["person_id"])
    op.create_table(
        "offline_collections",
        sa.Column("document_index", sa.String(64), nullable=False),
        sa.Column("document_type", sa.Integer(), nullable=False),
        sa.Column("document_number", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("tax_authority_code", sa.String(11), nullable=False),
        sa.Column("tax_authority_name", sa.String(100), nullable=False),
        sa.Column("province", sa.String(2), nullable=False),
        sa.Column("collected_at", instant, nullable=False),
        sa.PrimaryKeyConstraint("document_index", name="pk_offline_collections"),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(32), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("created_at", instant, nullable=False),
        sa.PrimaryKeyConstraint("kid", name="pk_signing_keys"),
    )


def downgrade() -> None:
    op.drop_table("signing_keys")
    op.drop_table("offline_collections")
    op.drop_table("phones")
    op.drop_table("persons")
