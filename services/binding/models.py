"""Binding's tables. Instants are milliseconds since the epoch (exact on SQLite and
PostgreSQL alike); personal numbers and names are encrypted, found by blind index."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from services.binding.domain import LIVE_STATES

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Blind indexes are HMAC-SHA256 hex digests under one of binding's own keys, whose id is
# stored beside each (index_key_id), so a rotation knows what is left to move.
INDEX_LENGTH = 64
KEY_ID_LENGTH = 16
CODE_LENGTH = 20

enterprises = Table(
    "enterprises",
    metadata,
    Column("code", String(CODE_LENGTH), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("tax_authority_code", String(11), nullable=False),
    Column("tax_authority_name", String(200), nullable=False),
    Column("province", String(2), nullable=False),
    # The relations the last registration confirmation recorded (A2); they make a
    # repeated confirmation a no-op and a changed person a replacement.
    Column("legal_representative_relation_id", String(32)),
    Column("financial_officer_relation_id", String(32)),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

relations = Table(
    "relations",
    metadata,
    Column("relation_id", String(32), primary_key=True),
    Column(
        "enterprise_code",
        String(CODE_LENGTH),
        ForeignKey("enterprises.code"),
        nullable=False,
        index=True,
    ),
    Column("role", Integer, nullable=False),
    Column("state", Integer, nullable=False),
    # domain.Origin: who asked, and so who confirms.
    Column("origin", String(16), nullable=False),
    # blind_index(f"{type}:{number}", "document"): the person, registered or not.
    Column("document_index", String(INDEX_LENGTH), nullable=False, index=True),
    Column("index_key_id", String(KEY_ID_LENGTH), nullable=False),
    Column("document_type", Integer, nullable=False),
    Column("document_number_encrypted", Text, nullable=False),
    Column("person_name_encrypted", Text, nullable=False),
    Column("valid_until", BigInteger),
    # Audit: the person who asked, and the one who made the last change.
    Column("created_by", String(64)),
    Column("changed_by", String(64)),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)
# At most one pending or active relation per enterprise, person and role: the database,
# not a prior read, refuses a duplicate however the requests race.
LIVE_RELATION_INDEX = Index(
    "uq_relations_live",
    relations.c.enterprise_code,
    relations.c.role,
    relations.c.document_index,
    unique=True,
    sqlite_where=relations.c.state.in_(LIVE_STATES),
    postgresql_where=relations.c.state.in_(LIVE_STATES),
)

# The person behind a token, learnt from auth once: person_id <-> document index (under the
# active key; a row of an older key is moved when auth is asked again after a rotation).
person_documents = Table(
    "person_documents",
    metadata,
    Column("person_id", String(64), primary_key=True),
    Column("document_index", String(INDEX_LENGTH), nullable=False, unique=True),
    Column("index_key_id", String(KEY_ID_LENGTH), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

projects = Table(
    "projects",
    metadata,
    Column("project_number", String(64), primary_key=True),
    Column(
        "enterprise_code",
        String(CODE_LENGTH),
        ForeignKey("enterprises.code"),
        nullable=False,
        index=True,
    ),
    Column("subject_type", Integer, nullable=False),
    Column("tax_authority_code", String(11), nullable=False),
    Column("tax_authority_name", String(200), nullable=False),
    Column("province", String(2), nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Handlers and contacts named in a project's cross-region report (D5); only the index is
# kept, since nothing shows them.
project_people = Table(
    "project_people",
    metadata,
    Column(
        "project_number",
        String(64),
        ForeignKey("projects.project_number", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("role", Integer, primary_key=True),
    Column("document_index", String(INDEX_LENGTH), primary_key=True, index=True),
    Column("index_key_id", String(KEY_ID_LENGTH), nullable=False),
)

agencies = Table(
    "agencies",
    metadata,
    Column("agency_code", String(CODE_LENGTH), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# F4: the agents the agency's basic-information form lists.
agency_agents = Table(
    "agency_agents",
    metadata,
    Column(
        "agency_code",
        String(CODE_LENGTH),
        ForeignKey("agencies.agency_code", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("document_index", String(INDEX_LENGTH), primary_key=True, index=True),
    Column("index_key_id", String(KEY_ID_LENGTH), nullable=False),
)

# F4: one agreement form per agency and client; a new submission replaces it.
agreements = Table(
    "agreements",
    metadata,
    Column("agreement_id", String(32), primary_key=True),
    Column("agency_code", String(CODE_LENGTH), ForeignKey("agencies.agency_code"), nullable=False),
    Column("client_code", String(CODE_LENGTH), nullable=False),
    Column("valid_from", BigInteger, nullable=False),
    Column("valid_until", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    UniqueConstraint("agency_code", "client_code"),
)

agreement_agents = Table(
    "agreement_agents",
    metadata,
    Column(
        "agreement_id",
        String(32),
        ForeignKey("agreements.agreement_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("document_index", String(INDEX_LENGTH), primary_key=True, index=True),
    Column("index_key_id", String(KEY_ID_LENGTH), nullable=False),
)
