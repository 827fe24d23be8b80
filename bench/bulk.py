"""Persons in bulk for the size comparison (bench/size.py): COPY into auth's and binding's
PostgreSQL databases, not through the APIs, so a million persons take minutes.

Person i is what bench/dataset.py would make of it: the resident ID `resident_id(i)`, the
phone 139NNNNNNNN (i as eight digits), level 4 with the load-test password (one Argon2id
hash with auth's parameters for everyone), and besides that one open session with a
refresh token the benchmark can compute (`refresh_token(i)`). Per group of 20 persons, as
`dataset.set_up_relations`: a client enterprise whose legal representative is the
group's first person (pending confirmation), an agency listing them all with an agreement
for that client, and a cross-region project in Beijing they all handle. Rows are what the
services write themselves: sealed numbers and names, blind indexes, millisecond instants
in binding; the services' caches are not involved.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from etax.binding.v1 import binding_pb2
from etax.common.v1 import types_pb2

from bench.dataset import (
    _GIVEN,
    _SURNAMES,
    AUTHORITIES,
    GROUP_SIZE,
    PROJECT_PROVINCE,
    PROVINCE,
    legacy_password_hash,
    resident_id,
    uscc,
)
from etax_platform.clock import CST, to_millis
from etax_platform.documents import Document, DocumentType
from etax_platform.keyrings import HmacKeyring
from etax_platform.pii import Keyring, PersonalData
from services.auth.sessions import NEW_SESSION_COLUMNS, encode_identity
from services.binding.domain import HANDLER, LEGAL_REPRESENTATIVE, PENDING, Origin
from services.binding.service import INDEX_PURPOSE, document_message

CHUNK = 20_000  # persons per COPY batch (a multiple of GROUP_SIZE)
_TOKEN_SEED = b"etax-bench-refresh-tokens"
INSPECTION = types_pb2.SUBJECT_TYPE_CROSS_REGION_INSPECTION
_NATURAL_PERSON = encode_identity(binding_pb2.Identity(entry=types_pb2.ENTRY_NATURAL_PERSON))


def person_id(i: int) -> str:
    return hashlib.sha256(f"etax-bench-person:{i}".encode()).hexdigest()[:32]


def phone(i: int) -> str:
    """Person i's phone; the same as bench.dataset.phone for i < 10,000."""
    return f"139{i:08d}"


def refresh_token(i: int) -> str:
    """The refresh token of person i's bulk session (known to the benchmark only)."""
    digest = hmac.new(_TOKEN_SEED, str(i).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def group_of(i: int) -> int:
    return i // GROUP_SIZE


def client_code(group: int) -> str:
    return uscc(2 * group + 1)


def agency_code(group: int) -> str:
    return uscc(2 * group + 2)


def project_number(group: int) -> str:
    return f"XM-{PROJECT_PROVINCE}-{group:06d}"


def name(i: int) -> str:
    return _SURNAMES[i % 10] + _GIVEN[i // 10 % 10] + _GIVEN[i // 100 % 10]


# The service's own tables and their indexes (TOAST is read through them when needed).
_PREWARM = """
SELECT coalesce(sum(pg_prewarm(c.oid::regclass)), 0)::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')
"""


@dataclass(frozen=True)
class Databases:
    auth: str  # psycopg conninfo (postgresql://...)
    binding: str

    @staticmethod
    def of(env: dict[str, str]) -> Databases:
        def plain(url: str) -> str:
            return url.replace("postgresql+psycopg://", "postgresql://", 1)

        return Databases(
            plain(env["ETAX_AUTH_DATABASE_URL"]), plain(env["ETAX_BINDING_DATABASE_URL"])
        )


def _copy(
    connection: psycopg.Connection[Any], table: str, columns: Sequence[str], rows: Any
) -> int:
    count = 0
    with (
        connection.cursor() as cursor,
        cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,  # type: ignore[arg-type]
    ):
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


_PERSON_COLUMNS = (
    "id",
    "document_type",
    "document_number",
    "document_index",
    "name",
    "overseas",
    "real_name_level",
    "face_verified_at",
    "password_hash",
    "password_changed_at",
    "default_phone_id",
    "registered_province",
    "origin",
    "created_at",
    "updated_at",
)
_PHONE_COLUMNS = ("id", "person_id", "number", "number_index", "verified_at", "created_at")
_TOKEN_COLUMNS = ("token_hash", "session_id", "issued_at", "expires_at")


def _chunks(start: int, stop: int) -> Iterator[range]:
    for first in range(start, stop, CHUNK):
        yield range(first, min(stop, first + CHUNK))


def _session_rows(
    connection: psycopg.Connection[Any],
    now: datetime,
    owners: Sequence[str],
    tokens: Sequence[str],
) -> None:
    """An open session for each owner (a person id), with the refresh token beside it."""
    sessions = [uuid.uuid4().hex for _ in owners]
    _copy(
        connection,
        "sessions",
        NEW_SESSION_COLUMNS,
        (
            (session, owner, PROVINCE, _NATURAL_PERSON, 1, "pwd,sms", "etax-web", now, now)
            for session, owner in zip(sessions, owners, strict=True)
        ),
    )
    expires = now + timedelta(hours=12)
    _copy(
        connection,
        "refresh_tokens",
        _TOKEN_COLUMNS,
        (
            (hashlib.sha256(token.encode()).hexdigest(), session, now, expires)
            for token, session in zip(tokens, sessions, strict=True)
        ),
    )


def open_sessions(auth: str, person_ids: Sequence[str], count: int) -> list[str]:
    """`count` more open sessions, round the given persons, each with a new refresh token,
    written into auth's database (`auth`, a psycopg conninfo). They are single-use
    material for a RefreshSession run of many seconds, which logging in cannot make: a
    login costs a hash and an SMS code, and E2 allows 5 codes per phone in 10 minutes."""
    tokens = [secrets.token_urlsafe(32) for _ in range(count)]
    owners = [person_ids[n % len(person_ids)] for n in range(count)]
    with psycopg.connect(auth) as connection:
        _session_rows(connection, datetime.now(CST), owners, tokens)
    return tokens


class BulkLoader:
    """Loads persons [start, stop) into a running platform's databases: auth's rows under
    the platform's PII keys, binding's indexes under binding's own keyring."""

    def __init__(self, databases: Databases, keyring: Keyring, binding_keys: HmacKeyring) -> None:
        self._databases = databases
        self._pd = PersonalData(keyring)
        self._binding_keys = binding_keys
        self._key_id = binding_keys.active_id
        self._hash = legacy_password_hash()
        self._now = datetime.now(CST)

    def load(self, start: int, stop: int, log: Any = print) -> None:
        if start % GROUP_SIZE or stop % GROUP_SIZE:
            raise ValueError("persons are loaded in whole groups of 20")
        with (
            psycopg.connect(self._databases.auth) as auth,
            psycopg.connect(self._databases.binding) as binding,
        ):
            for persons in _chunks(start, stop):
                documents = [
                    Document(DocumentType.RESIDENT_IDENTITY_CARD, resident_id(i)) for i in persons
                ]
                self._auth_rows(
                    auth, persons, documents, [d.blind_index(self._pd) for d in documents]
                )
                bound = [
                    self._binding_keys.digest(self._key_id, INDEX_PURPOSE, document_message(d))
                    for d in documents
                ]
                self._binding_rows(binding, persons, documents, bound)
                auth.commit()
                binding.commit()
                log(f"bulk: persons {persons.start:,}..{persons.stop - 1:,} loaded")
            for connection in (auth, binding):
                connection.execute("ANALYZE")
                connection.commit()
        self.settle(log)

    def settle(self, log: Any = print, *, quiet_load: float = 1.0, at_most: float = 90.0) -> None:
        """After a bulk load PostgreSQL still has work of its own: autovacuum of the new
        rows and the checkpoint of hundreds of MB. Measured on top of it, every RPC gets
        slower, those that never read a person too. So: VACUUM and CHECKPOINT now, then
        wait until the machine's 1-minute load falls under `quiet_load` (or `at_most`).

        Then every table and index into PostgreSQL's shared buffers (pg_prewarm): a
        database that has served its persons for a while holds its hot pages there, a
        freshly loaded one only in the OS's cache, and each single-use refresh touches a
        session nobody touched before. Unwarmed, a refresh at 1M read 8.8 blocks from
        outside the buffers against 0.1 at 10k (bench/analysis.md); the size target is
        about per-call work, not first touches."""
        for conninfo in (self._databases.auth, self._databases.binding):
            with psycopg.connect(conninfo, autocommit=True) as connection:
                connection.execute("VACUUM (ANALYZE)")
                connection.execute("CHECKPOINT")
                connection.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
                row = connection.execute(_PREWARM).fetchone()
                log(f"bulk: {row[0] if row else 0:,} blocks prewarmed")
        deadline = time.monotonic() + at_most
        while os.getloadavg()[0] >= quiet_load and time.monotonic() < deadline:
            time.sleep(5)
        log(f"bulk: settled, load average {os.getloadavg()[0]:.2f}")

    def _auth_rows(
        self,
        connection: psycopg.Connection[Any],
        persons: range,
        documents: list[Document],
        indexes: list[str],
    ) -> None:
        now = self._now
        phone_ids = [uuid.uuid4().hex for _ in persons]
        _copy(
            connection,
            "persons",
            _PERSON_COLUMNS,
            (
                (
                    person_id(i),
                    int(document.type),
                    self._pd.encrypt(document.number, "persons.document_number"),
                    index,
                    self._pd.encrypt(name(i), "persons.name"),
                    False,
                    4,
                    now,
                    self._hash,
                    now,
                    phone_id,
                    PROVINCE,
                    "legacy_import",
                    now,
                    now,
                )
                for i, document, index, phone_id in zip(
                    persons, documents, indexes, phone_ids, strict=True
                )
            ),
        )
        _copy(
            connection,
            "phones",
            _PHONE_COLUMNS,
            (
                (
                    phone_id,
                    person_id(i),
                    self._pd.encrypt(phone(i), "phones.number"),
                    self._pd.blind_index(phone(i), "phone"),
                    None,
                    now,
                )
                for i, phone_id in zip(persons, phone_ids, strict=True)
            ),
        )
        _session_rows(
            connection,
            now,
            [person_id(i) for i in persons],
            [refresh_token(i) for i in persons],
        )

    def _binding_rows(
        self,
        connection: psycopg.Connection[Any],
        persons: range,
        documents: list[Document],
        indexes: list[str],
    ) -> None:
        now_ms = to_millis(self._now)
        valid_from = now_ms - 86_400_000
        valid_until = now_ms + 365 * 86_400_000
        groups = range(group_of(persons.start), group_of(persons.stop - 1) + 1)
        _copy(
            connection,
            "person_documents",
            ("person_id", "document_index", "index_key_id", "created_at"),
            (
                (person_id(i), index, self._key_id, now_ms)
                for i, index in zip(persons, indexes, strict=True)
            ),
        )
        relation_ids = {g: uuid.uuid4().hex for g in groups}
        agreement_ids = {g: uuid.uuid4().hex for g in groups}
        local = {i: (d, x) for i, d, x in zip(persons, documents, indexes, strict=True)}
        shandong, beijing = AUTHORITIES[PROVINCE], AUTHORITIES[PROJECT_PROVINCE]
        _copy(
            connection,
            "enterprises",
            (
                "code",
                "name",
                "tax_authority_code",
                "tax_authority_name",
                "province",
                "legal_representative_relation_id",
                "created_at",
                "updated_at",
            ),
            (
                (
                    client_code(g),
                    f"压测客户企业{g}有限公司",
                    shandong.code,
                    shandong.name,
                    shandong.province,
                    relation_ids[g],
                    now_ms,
                    now_ms,
                )
                for g in groups
            ),
        )
        first = {g: local[g * GROUP_SIZE] for g in groups}
        _copy(
            connection,
            "relations",
            (
                "relation_id",
                "enterprise_code",
                "role",
                "state",
                "origin",
                "document_index",
                "index_key_id",
                "document_type",
                "document_number_encrypted",
                "person_name_encrypted",
                "created_at",
                "updated_at",
            ),
            (
                (
                    relation_ids[g],
                    client_code(g),
                    LEGAL_REPRESENTATIVE,
                    PENDING,
                    Origin.REGISTRATION.value,
                    first[g][1],
                    self._key_id,
                    int(first[g][0].type),
                    self._pd.encrypt(first[g][0].number, "binding.relations.document_number"),
                    self._pd.encrypt(name(g * GROUP_SIZE), "binding.relations.person_name"),
                    now_ms,
                    now_ms,
                )
                for g in groups
            ),
        )
        _copy(
            connection,
            "agencies",
            ("agency_code", "name", "created_at", "updated_at"),
            ((agency_code(g), f"压测税务师事务所{g}", now_ms, now_ms) for g in groups),
        )
        _copy(
            connection,
            "agency_agents",
            ("agency_code", "document_index", "index_key_id"),
            ((agency_code(group_of(i)), x, self._key_id) for i, (_d, x) in local.items()),
        )
        _copy(
            connection,
            "agreements",
            (
                "agreement_id",
                "agency_code",
                "client_code",
                "valid_from",
                "valid_until",
                "created_at",
                "updated_at",
            ),
            (
                (
                    agreement_ids[g],
                    agency_code(g),
                    client_code(g),
                    valid_from,
                    valid_until,
                    now_ms,
                    now_ms,
                )
                for g in groups
            ),
        )
        _copy(
            connection,
            "agreement_agents",
            ("agreement_id", "document_index", "index_key_id"),
            ((agreement_ids[group_of(i)], x, self._key_id) for i, (_d, x) in local.items()),
        )
        _copy(
            connection,
            "projects",
            (
                "project_number",
                "enterprise_code",
                "subject_type",
                "tax_authority_code",
                "tax_authority_name",
                "province",
                "created_at",
                "updated_at",
            ),
            (
                (
                    project_number(g),
                    client_code(g),
                    INSPECTION,
                    beijing.code,
                    beijing.name,
                    beijing.province,
                    now_ms,
                    now_ms,
                )
                for g in groups
            ),
        )
        _copy(
            connection,
            "project_people",
            ("project_number", "role", "document_index", "index_key_id"),
            (
                (project_number(group_of(i)), HANDLER, x, self._key_id)
                for i, (_d, x) in local.items()
            ),
        )
