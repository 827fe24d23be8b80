"""Binding's blind indexes name the key that made them (binding's own keys, rotating).

Rows written before were indexed with the platform's PII index key (ETAX_PII_INDEX_KEY),
which binding no longer holds: they get the key id "pii". To keep them found, give binding
that key as an older key (ETAX_BINDING_INDEX_KEYS="pii:<the old index key>,b1:<new>",
ETAX_BINDING_INDEX_ACTIVE_KEY_ID=b1) and run `python -m services.binding.reindex`
(docs/binding.md, "Blind-index keys").

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("relations", "person_documents", "project_people", "agency_agents", "agreement_agents")
LEGACY_KEY_ID = "pii"


def upgrade() -> None:
    for table in TABLES:
        # The default fills the existing rows only: every insert names its key.
        op.add_column(
            table,
            sa.Column("index_key_id", sa.String(16), nullable=False, server_default=LEGACY_KEY_ID),
        )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("index_key_id")
