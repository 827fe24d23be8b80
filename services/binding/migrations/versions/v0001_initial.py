"""Enterprises, relations, persons' document indexes, cross-region projects, agencies.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_CODE = 20
_INDEX = 64
# RELATION_STATE_PENDING, RELATION_STATE_ACTIVE
_LIVE_STATES = "state IN (1, 2)"


def upgrade() -> None:
    op.create_table(
        "enterprises",
        sa.Column("code", sa.String(_CODE), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("tax_authority_code", sa.String(11), nullable=False),
        sa.Column("tax_authority_name", sa.String(200), nullable=False),
        sa.Column("province", sa.String(2), nullable=False),
        sa.Column("legal_representative_relation_id", sa.String(32)),
        sa.Column("financial_officer_relation_id", sa.String(32)),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("code", name="pk_enterprises"),
    )
    op.create_table(
        "relations",
        sa.Column("relation_id", sa.String(32), nullable=False),
        sa.Column("enterprise_code", sa.String(_CODE), nullable=False),
        sa.Column("role", sa.Integer, nullable=False),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("document_index", sa.String(_INDEX), nullable=False),
        sa.Column("document_type", sa.Integer, nullable=False),
        sa.Column("document_number_encrypted", sa.Text, nullable=False),
        sa.Column("person_name_encrypted", sa.Text, nullable=False),
        sa.Column("valid_until", sa.BigInteger),
        sa.Column("created_by", sa.String(64)),
        sa.Column("changed_by", sa.String(64)),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("relation_id", name="pk_relations"),
        sa.ForeignKeyConstraint(
            ["enterprise_code"],
            ["enterprises.code"],
            name="fk_relations_enterprise_code_enterprises",
        ),
    )
    op.create_index("ix_relations_enterprise_code", "relations", ["enterprise_code"])
    op.create_index("ix_relations_document_index", "relations", ["document_index"])
    op.create_index(
        "uq_relations_live",
        "relations",
        ["enterprise_code", "role", "document_index"],
        unique=True,
        sqlite_where=sa.text(_LIVE_STATES),
        postgresql_where=sa.text(_LIVE_STATES),
    )
    op.create_table(
        "person_documents",
        sa.Column("person_id", sa.String(64), nullable=False),
        sa.Column("document_index", sa.String(_INDEX), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("person_id", name="pk_person_documents"),
        sa.UniqueConstraint("document_index", name="uq_person_documents_document_index"),
    )
    op.create_table(
        "projects",
        sa.Column("project_number", sa.String(64), nullable=False),
        sa.Column("enterprise_code", sa.String(_CODE), nullable=False),
        sa.Column("subject_type", sa.Integer, nullable=False),
        sa.Column("tax_authority_code", sa.String(11), nullable=False),
        sa.Column("tax_authority_name", sa.String(200), nullable=False),
        sa.Column("province", sa.String(2), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("project_number", name="pk_projects"),
        sa.ForeignKeyConstraint(
            ["enterprise_code"],
            ["enterprises.code"],
            name="fk_projects_enterprise_code_enterprises",
        ),
    )
    op.create_index("ix_projects_enterprise_code", "projects", ["enterprise_code"])
    op.create_index("ix_projects_province", "projects", ["province"])
    op.create_table(
        "project_people",
        sa.Column("project_number", sa.String(64), nullable=False),
        sa.Column("role", sa.Integer, nullable=False),
        sa.Column("document_index", sa.String(_INDEX), nullable=False),
        sa.PrimaryKeyConstraint(
            "project_number", "role", "document_index", name="pk_project_people"
        ),
        sa.ForeignKeyConstraint(
            ["project_number"],
            ["projects.project_number"],
            name="fk_project_people_project_number_projects",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_project_people_document_index", "project_people", ["document_index"])
    op.create_table(
        "agencies",
        sa.Column("agency_code", sa.String(_CODE), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("agency_code", name="pk_agencies"),
    )
    op.create_table(
        "agency_agents",
        sa.Column("agency_code", sa.String(_CODE), nullable=False),
        sa.Column("document_index", sa.String(_INDEX), nullable=False),
        sa.PrimaryKeyConstraint("agency_code", "document_index", name="pk_agency_agents"),
        sa.ForeignKeyConstraint(
            ["agency_code"],
            ["agencies.agency_code"],
            name="fk_agency_agents_agency_code_agencies",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_agency_agents_document_index", "agency_agents", ["document_index"])
    op.create_table(
        "agreements",
        sa.Column("agreement_id", sa.String(32), nullable=False),
        sa.Column("agency_code", sa.String(_CODE), nullable=False),
        sa.Column("client_code", sa.String(_CODE), nullable=False),
        sa.Column("valid_from", sa.BigInteger, nullable=False),
        sa.Column("valid_until", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("agreement_id", name="pk_agreements"),
        sa.ForeignKeyConstraint(
            ["agency_code"],
            ["agencies.agency_code"],
            name="fk_agreements_agency_code_agencies",
        ),
        sa.UniqueConstraint("agency_code", "client_code", name="uq_agreements_agency_code"),
    )
    op.create_table(
        "agreement_agents",
        sa.Column("agreement_id", sa.String(32), nullable=False),
        sa.Column("document_index", sa.String(_INDEX), nullable=False),
        sa.PrimaryKeyConstraint("agreement_id", "document_index", name="pk_agreement_agents"),
        sa.ForeignKeyConstraint(
            ["agreement_id"],
            ["agreements.agreement_id"],
            name="fk_agreement_agents_agreement_id_agreements",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_agreement_agents_document_index", "agreement_agents", ["document_index"])


def downgrade() -> None:
    for table in (
        "agreement_agents",
        "agreements",
        "agency_agents",
        "agencies",
        "project_people",
        "projects",
        "person_documents",
        "relations",
        "enterprises",
    ):
        op.drop_table(table)
