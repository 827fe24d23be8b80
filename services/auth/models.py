"""Auth's tables. Personal numbers are stored sealed (PersonalData.encrypt, one context per
column) and found by blind index; names are sealed too.

A person's password hash (with its parameters, for rehash on login), the phones that log
in (C3) and their last SMS check (C4, D2), the signing keys of access tokens (rotation adds
rows), sessions and their refresh tokens (stored hashed), the old enterprise login's
credentials (D7) and the audit trail. Lockout state, login challenges and QR tickets are
short-lived and live in the key-value store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from etax_platform.clock import CST


class Instant(TypeDecorator[datetime]):
    """An aware instant: timestamptz on PostgreSQL, UTC text on SQLite (which orders
    correctly as text), returned in China Standard Time."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        instant: datetime = value if value.tzinfo else value.replace(tzinfo=UTC)
        return instant.astimezone(CST)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = 32  # uuid4 hex
INDEX = 64  # HMAC-SHA256 hex

persons = Table(
    "persons",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("document_type", Integer, nullable=False),
    Column("document_number", Text, nullable=False),  # sealed, context persons.document_number
    # Decides concurrent registrations of one document (B1: registered once).
    Column("document_index", String(INDEX), nullable=False, unique=True),
    Column("name", Text, nullable=False),  # sealed, context persons.name
    # B6: registered as an overseas person (restricted until the hall collects them).
    Column("overseas", Boolean, nullable=False),
    Column("real_name_level", SmallInteger, nullable=False),
    Column("face_verified_at", Instant, nullable=True),
    Column("email", Text, nullable=True),  # sealed, context persons.email
    Column("email_index", String(INDEX), nullable=True, index=True),
    Column("username", String(20), nullable=True),
    Column("username_key", String(20), nullable=True, unique=True),  # case-folded (C2)
    # The last change of an existing username (C2: one per CST calendar year).
    Column("username_changed_at", Instant, nullable=True),
    # PHC string with its parameters; NULL: none yet (migrated, must use forgot password).
    Column("password_hash", Text, nullable=True),
    Column("password_changed_at", Instant, nullable=True),
    # C3: the phone the person chose as default. Not a foreign key: a phone taken by
    # another person (C4) gets a new id there, and the default falls back to the phone
    # verified most recently (domain.with_default), without touching this row.
    Column("default_phone_id", String(ID), nullable=True),
    Column("registered_province", String(2), nullable=False),
    # "registration" or "legacy_import".
    Column("origin", String(16), nullable=False),
    Column("created_at", Instant, nullable=False),
    Column("updated_at", Instant, nullable=False),
)

phones = Table(
    "phones",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("person_id", ForeignKey("persons.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("number", Text, nullable=False),  # sealed, context phones.number
    # C4: one row per phone number, so at most one holder, whatever runs concurrently.
    Column("number_index", String(INDEX), nullable=False, unique=True),
    # The holder's last passed SMS check on it (C4, D2); NULL: imported, never checked here.
    Column("verified_at", Instant, nullable=True),
    Column("created_at", Instant, nullable=False),
)

# B2, B5, B6: the hall collected a person's real-name information offline. Keyed by the
# document, since the hall may collect a person before they register.
offline_collections = Table(
    "offline_collections",
    metadata,
    Column("document_index", String(INDEX), primary_key=True),
    Column("document_type", Integer, nullable=False),
    Column("document_number", Text, nullable=False),  # sealed
    Column("name", Text, nullable=False),  # sealed
    Column("tax_authority_code", String(11), nullable=False),
    Column("tax_authority_name", String(100), nullable=False),
    Column("province", String(2), nullable=False),
    Column("collected_at", Instant, nullable=False),
)

# Ed25519 keys that sign access tokens (services/auth/keys.py). A key is published from
# created_at and signs from signs_from (published long enough before for every gateway's
# cached key set to hold it); it stops signing when the next generation starts and stays
# published until its last token expired. The unique generation decides concurrent
# rotations by several replicas.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(ID), primary_key=True),
    Column("private_key", Text, nullable=False),  # PKCS#8 PEM, sealed
    Column("created_at", Instant, nullable=False),
    Column("generation", Integer, nullable=False, unique=True),
    Column("signs_from", Instant, nullable=False),
)

# A login session (A3: with the province it came through) and what it acts as.
sessions = Table(
    "sessions",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("person_id", ForeignKey("persons.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("province", String(2), nullable=False),
    # etax.binding.v1.Identity, serialized and base64-encoded (no personal numbers in it).
    Column("identity", Text, nullable=False),
    # The identity's entry (etax.common.v1.Entry), for the audit rows a refresh writes in
    # SQL; NULL only in rows older than migration 0005 that it could not read.
    Column("entry", SmallInteger, nullable=True),
    # Authentication methods used (amr), comma-separated: pwd, sms, face, qr.
    Column("methods", String(64), nullable=False),
    Column("client_app", String(16), nullable=False),
    Column("created_at", Instant, nullable=False),
    # The last access token issued for it (refresh, identity switch): revocation markers
    # are needed only while such a token can still be valid.
    Column("last_issued_at", Instant, nullable=False),
    # Indexed: every service reads the recent revocations every quarter second.
    Column("revoked_at", Instant, nullable=True, index=True),
    Column("revoked_reason", String(32), nullable=True),
)

# Opaque refresh tokens, single use: only a SHA-256 of the token is kept. A token presented
# after its use revokes the whole session (theft detection).
refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", String(INDEX), primary_key=True),
    Column("session_id", ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("issued_at", Instant, nullable=False),
    Column("expires_at", Instant, nullable=False),
    Column("used_at", Instant, nullable=True),
)

# D7: the old enterprise login's credential per enterprise, bound to a registered person.
legacy_credentials = Table(
    "legacy_credentials",
    metadata,
    Column("enterprise_code", String(20), primary_key=True),
    Column("person_id", ForeignKey("persons.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("password_hash", Text, nullable=False),
    Column("imported_at", Instant, nullable=False),
)

# Who did what, when, through which entry and province, and how it ended. Accounts are
# masked; never a plain personal number.
audit_events = Table(
    "audit_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    # Unique per event, made before it is written: a replay of the journal (BatchWriter)
    # after a partial write inserts nothing twice. NULL only in rows older than it.
    Column("event_id", String(ID), nullable=True, index=True, unique=True),
    Column("occurred_at", Instant, nullable=False, index=True),
    Column("action", String(40), nullable=False),
    # ok, failed (a wrong credential), refused (any other domain error), error (a bug or a
    # failed dependency), locked (the lock a failure caused).
    Column("outcome", String(16), nullable=False),
    Column("reason", String(40), nullable=True),
    Column("person_id", String(ID), nullable=True, index=True),
    Column("session_id", String(ID), nullable=True),
    Column("entry", SmallInteger, nullable=True),
    Column("province", String(2), nullable=True),
    Column("method", String(16), nullable=True),
    Column("masked_account", String(64), nullable=True),
    Column("request_id", String(128), nullable=True),
    # Small JSON object (identity codes, counts); never a personal number.
    Column("detail", Text, nullable=True),
)
