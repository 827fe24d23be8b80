"""Binding's use cases: its tables, the persons auth knows, and the rules of domain.py.

Persons appear in two ways. Relations, report persons and agents are keyed by the
blind index of a document (the person need not be registered, F1(b), A2); a caller is a
person_id (from a token or from auth). Auth tells binding a person's document once, and
binding keeps person_id <-> document index in its own table (`person_documents`).

The blind index is binding's own (ETAX_BINDING_INDEX_KEYS), never auth's: new rows use the
active key and store its id; a person's rows are looked up under every key the keyring
still holds, so a rotation needs no downtime (`services.binding.reindex` then moves the
rows to the active key).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import grpc
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.binding.v1.binding_pb2 import RelationState
from etax.common.v1 import types_pb2
from etax.common.v1.types_pb2 import Entry, Role, SubjectType
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    CursorResult,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from etax_platform.clients import call
from etax_platform.clock import Clock, from_millis, from_timestamp, to_millis, to_timestamp
from etax_platform.db import Database, dialect_insert
from etax_platform.documents import Document
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.keyrings import HmacKeyring
from etax_platform.pii import PersonalData, mask_document, mask_name
from etax_platform.revocation import Revocations
from services.binding import domain, metrics
from services.binding.domain import (
    ACTIVE,
    ENDED,
    EXPIRED,
    LIVE_STATES,
    PENDING,
    REJECTED,
    REPLACED,
    WITHDRAWN,
    Actor,
    AgentClient,
    Enterprise,
    Identity,
    NamedDocument,
    Origin,
    Project,
    ProjectAccess,
    Relation,
    RelationFacts,
    Target,
    TaxAuthority,
)
from services.binding.models import (
    agencies,
    agency_agents,
    agreement_agents,
    agreements,
    enterprises,
    person_documents,
    project_people,
    projects,
    relations,
)

log = logging.getLogger("etax.binding")

# Encryption contexts: a ciphertext only decrypts in the column it was written for.
_DOCUMENT_NUMBER = "binding.relations.document_number"
_REMEMBER_AT_MOST = 100_000
_PERSON_NAME = "binding.relations.person_name"
_SEARCH_LIMIT = 50
AnyRow = Row[*tuple[Any, ...]]
_ALREADY_RELATED = "您与该企业已存在该身份的关联关系或待确认的授权"
# HMAC purpose of a document's blind index: with the platform's old PII index key as a key
# of binding's keyring, the digest is the index binding stored before it had keys of its
# own (etax_platform.documents.document_blind_index).
INDEX_PURPOSE = "document"
# A person's indexes, one per key still held: the active key's first (what new rows use).
Indexes = tuple[str, ...]


def insert_ignoring_conflicts(session: Connection, table: Table, values: Mapping[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; True if the row went in. A concurrent insert of
    the same key waits for the other transaction and then yields to it."""
    statement = (
        dialect_insert(session, table)
        .values(**values)
        .on_conflict_do_nothing()
        .returning(*table.primary_key.columns)
    )
    return session.execute(statement).first() is not None


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount


def _millis(instant: datetime | None) -> int | None:
    return None if instant is None else to_millis(instant)


def _instant(millis: int | None) -> datetime | None:
    return None if millis is None else from_millis(millis)


class Auth:
    """The calls binding makes to auth, each with a deadline."""

    def __init__(self, channel: grpc.Channel, timeout: float) -> None:
        self._internal = auth_pb2_grpc.InternalAuthServiceStub(channel)
        self._public = auth_pb2_grpc.AuthServiceStub(channel)
        self._timeout = timeout

    def person(self, person_id: str) -> NamedDocument:
        response = call(
            self._internal.GetPerson,
            auth_pb2.GetPersonRequest(person_id=person_id),
            timeout=self._timeout,
            dependency="auth",
        )
        identity = response.person.identity
        document = domain.document(identity.document.type, identity.document.number, "person")
        return NamedDocument(document, " ".join(identity.name.split()))

    def registered_person_id(self, document: Document) -> str | None:
        response = call(
            self._internal.ResolvePerson,
            auth_pb2.ResolvePersonRequest(
                document=types_pb2.Document(
                    type=cast(types_pb2.DocumentType, int(document.type)), number=document.number
                )
            ),
            timeout=self._timeout,
            dependency="auth",
        )
        return response.person_id if response.registered and response.person_id else None

    def public_keys(self) -> list[dict[str, str]]:
        response = call(
            self._public.GetPublicKeys,
            auth_pb2.GetPublicKeysRequest(),
            timeout=self._timeout,
            dependency="auth",
        )
        return [
            {"kty": k.kty, "crv": k.crv, "x": k.x, "kid": k.kid, "alg": k.alg, "use": k.use}
            for k in response.keys
        ]

    def revoked_since(self, since: datetime | None) -> Revocations:
        """Auth's revocation feed (global revocation: etax_platform.revocation)."""
        request = auth_pb2.ListRevokedSessionsRequest()
        if since is not None:
            request.since.CopyFrom(to_timestamp(since))
        response = call(
            self._internal.ListRevokedSessions, request, timeout=self._timeout, dependency="auth"
        )
        return Revocations(
            session_ids=list(response.session_ids),
            as_of=from_timestamp(response.as_of),
            retain_for=response.retain_for.ToTimedelta(),
        )


def document_message(document: Document) -> str:
    """What a document's blind index is the MAC of (the type and the normalised number)."""
    return f"{int(document.type)}:{document.number}"


# The tables that name persons by blind index, besides person_documents.
_LINK_TABLES = (project_people, agency_agents, agreement_agents)


def move_rows(session: Connection, older: Sequence[str], active: str, key_id: str) -> Counter[str]:
    """Moves one document's rows from its older indexes to its active one, by table.

    A link row whose twin is already under the active key (a form submitted again since)
    is deleted instead; a live relation whose twin is live under the active key (a race
    the create path leaves only in theory) stays where it is, still found under the older
    key. Statements that cannot conflict, so a caller needs no savepoints."""
    moved: Counter[str] = Counter()
    if not older:
        return moved
    values = {"document_index": active, "index_key_id": key_id}
    twin = relations.alias("twin")
    live_twin = (
        select(twin.c.relation_id)
        .where(
            twin.c.enterprise_code == relations.c.enterprise_code,
            twin.c.role == relations.c.role,
            twin.c.document_index == active,
            twin.c.state.in_(LIVE_STATES),
        )
        .exists()
    )
    result = session.execute(
        update(relations)
        .where(
            relations.c.document_index.in_(older),
            not_(and_(relations.c.state.in_(LIVE_STATES), live_twin)),
        )
        .values(**values)
    )
    moved[relations.name] += _rowcount(result)
    for table in _LINK_TABLES:
        others = [c for c in table.primary_key.columns if c.name != "document_index"]
        same = table.alias("same")
        duplicate = (
            select(same.c.document_index)
            .where(same.c.document_index == active, *(same.c[c.name] == c for c in others))
            .exists()
        )
        session.execute(delete(table).where(table.c.document_index.in_(older), duplicate))
        result = session.execute(
            update(table).where(table.c.document_index.in_(older)).values(**values)
        )
        moved[table.name] += _rowcount(result)
    return moved


class PersonDirectory:
    """Documents' blind indexes under binding's keyring, and person_id <-> document index,
    learnt from auth and kept in `person_documents` (under the active key)."""

    def __init__(self, db: Database, keyring: HmacKeyring, clock: Clock, auth: Auth):
        self._db = db
        self._keyring = keyring
        self._clock = clock
        self._auth = auth
        self._indexes: dict[str, Indexes] = {}

    @property
    def active_key_id(self) -> str:
        return self._keyring.active_id

    def index_of_document(self, document: Document) -> str:
        """The document's index under the active key: what a new row stores."""
        return self._keyring.digest(
            self._keyring.active_id, INDEX_PURPOSE, document_message(document)
        )

    def indexes_of_document(self, document: Document) -> Indexes:
        """The document's index under every key held, the active key's first."""
        return tuple(self._keyring.digests(INDEX_PURPOSE, document_message(document)).values())

    def indexes_of(self, person_id: str) -> Indexes:
        """The person's document indexes; auth is asked only the first time (and once more
        after a rotation), the database once per process (a document never changes)."""
        cached = self._indexes.get(person_id)
        if cached is not None:
            return cached
        indexes = self._indexes_of(person_id)
        if len(self._indexes) >= _REMEMBER_AT_MOST:
            self._indexes.clear()
        self._indexes[person_id] = indexes
        return indexes

    def _indexes_of(self, person_id: str) -> Indexes:
        # With one key, the stored index is all there is to know. With older keys still
        # held, their indexes need the document itself: auth has it.
        if len(self._keyring.keys) == 1:
            with self._db.reading() as session:
                known = session.execute(_DOCUMENT_INDEX_OF, {"person_id": person_id}).first()
            if known is not None and known.index_key_id == self._keyring.active_id:
                return (str(known.document_index),)
        document = self._auth.person(person_id).document
        self.remember(person_id, document)
        return self.indexes_of_document(document)

    def remember(self, person_id: str, document: Document) -> str:
        """Keeps person_id <-> the document's active index; returns that index. During a
        rotation (older keys held) the person's rows move to the active key as well."""
        index = self.index_of_document(document)
        older = self.indexes_of_document(document)[1:]
        if older:
            try:
                with self._db.transaction() as session:
                    move_rows(session, older, index, self._keyring.active_id)
            except IntegrityError:
                # Another replica moved them at the same moment: they are found either way.
                log.info("a person's rows were being moved by another process")
        with self._db.transaction() as session:
            # A row of an older key is moved to the active one.
            session.execute(
                update(person_documents)
                .where(
                    person_documents.c.person_id == person_id,
                    person_documents.c.index_key_id != self._keyring.active_id,
                )
                .values(document_index=index, index_key_id=self._keyring.active_id)
            )
            insert_ignoring_conflicts(
                session,
                person_documents,
                {
                    "person_id": person_id,
                    "document_index": index,
                    "index_key_id": self._keyring.active_id,
                    "created_at": to_millis(self._clock.now()),
                },
            )
        return index

    def learn_if_registered(self, document: Document) -> None:
        """Best effort, so a list can show that an added person is registered; without
        auth the person_id is learnt later, when the person shows up."""
        try:
            person_id = self._auth.registered_person_id(document)
        except DomainError as error:
            log.warning("could not resolve an added person: %s", error.reason.value)
            return
        if person_id is not None:
            self.remember(person_id, document)


def _in_state(state: RelationState, now_ms: int | BindParameter[int]) -> ColumnElement[bool]:
    """Relations whose state as of now is `state`: past valid_until, pending and active
    ones count as expired (F1)."""
    unexpired = or_(relations.c.valid_until.is_(None), relations.c.valid_until > now_ms)
    if state == EXPIRED:
        return or_(
            relations.c.state == EXPIRED,
            and_(relations.c.state.in_(LIVE_STATES), not_(unexpired)),
        )
    if state in LIVE_STATES:
        return and_(relations.c.state == state, unexpired)
    return relations.c.state == state


# Hot statements (login's access check, identity lists) are built once: building and
# keying a statement costs about as much CPU as running it.
_INDEXES: BindParameter[list[str]] = bindparam("indexes", expanding=True)
_ACTIVE_ROLES = select(relations.c.enterprise_code, relations.c.role).where(
    relations.c.document_index.in_(_INDEXES),
    _in_state(ACTIVE, bindparam("now_ms")),
)
_ACTIVE_ROLES_IN = _ACTIVE_ROLES.where(relations.c.enterprise_code == bindparam("enterprise_code"))

_DOCUMENT_INDEX_OF = select(
    person_documents.c.document_index, person_documents.c.index_key_id
).where(person_documents.c.person_id == bindparam("person_id"))
_ENTERPRISE = select(enterprises).where(enterprises.c.code == bindparam("code"))
_REPORT_ROLES = (
    select(project_people.c.project_number, project_people.c.role)
    .where(project_people.c.document_index.in_(_INDEXES))
    .distinct()
)
_PROJECTS = (
    select(
        projects,
        enterprises.c.name.label("enterprise_name"),
        enterprises.c.province.label("home_province"),
    )
    .join(enterprises, enterprises.c.code == projects.c.enterprise_code)
    .where(
        or_(
            projects.c.enterprise_code.in_(bindparam("codes", expanding=True)),
            projects.c.project_number.in_(bindparam("numbers", expanding=True)),
        )
    )
    .order_by(projects.c.project_number)
)
_PROJECTS_IN_PROVINCE = _PROJECTS.where(projects.c.province == bindparam("province"))
_AGENT_CLIENTS = (
    select(
        agreements.c.agency_code,
        agreements.c.client_code,
        enterprises.c.code,
        enterprises.c.name,
        enterprises.c.tax_authority_code,
        enterprises.c.tax_authority_name,
        enterprises.c.province,
    )
    .select_from(
        agreements.join(
            agreement_agents,
            agreement_agents.c.agreement_id == agreements.c.agreement_id,
        )
        .join(
            agency_agents,
            # Both forms name the person, possibly under different keys during a rotation.
            and_(
                agency_agents.c.agency_code == agreements.c.agency_code,
                agency_agents.c.document_index.in_(_INDEXES),
            ),
        )
        .outerjoin(enterprises, enterprises.c.code == agreements.c.client_code)
    )
    .where(
        agreement_agents.c.document_index.in_(_INDEXES),
        agreements.c.valid_from <= bindparam("now_ms"),
        agreements.c.valid_until > bindparam("now_ms"),
    )
    .distinct()
    .order_by(agreements.c.agency_code, agreements.c.client_code)
)
_AGENT_CLIENTS_OF = _AGENT_CLIENTS.where(agreements.c.agency_code == bindparam("agency_code"))


def _relations_query() -> Select[Any]:
    return select(
        relations,
        enterprises.c.name.label("enterprise_name"),
        person_documents.c.person_id,
    ).select_from(
        relations.join(enterprises, enterprises.c.code == relations.c.enterprise_code).outerjoin(
            person_documents, person_documents.c.document_index == relations.c.document_index
        )
    )


def _tax_authority(row: AnyRow) -> TaxAuthority:
    """The authority columns enterprises and projects share."""
    return TaxAuthority(row.tax_authority_code, row.tax_authority_name, row.province)


def _enterprise(row: AnyRow) -> Enterprise:
    return Enterprise(row.code, row.name, _tax_authority(row))


class BindingService:
    def __init__(
        self,
        db: Database,
        personal_data: PersonalData,
        index_keys: HmacKeyring,
        clock: Clock,
        auth: Auth,
    ):
        self._db = db
        self._personal_data = personal_data
        self._clock = clock
        self._directory = PersonDirectory(db, index_keys, clock, auth)
        self._auth = auth

    # --- enterprises and their people (A2, F2) ------------------------------------------

    def confirm_taxpayer_registration(
        self,
        enterprise: Enterprise,
        legal_representative: NamedDocument,
        financial_officer: NamedDocument | None,
    ) -> tuple[Enterprise, list[Relation]]:
        """Creates or updates the enterprise and records its legal representative and
        financial officer, each pending their own confirmation. The same registration
        again changes nothing; a different person replaces the old relation."""
        for person in (legal_representative, financial_officer):
            if person is not None:  # so the relations show who is registered already
                self._directory.learn_if_registered(person.document)
        now = self._clock.now()
        now_ms = to_millis(now)
        authority = enterprise.tax_authority
        columns = {
            "name": enterprise.name,
            "tax_authority_code": authority.code,
            "tax_authority_name": authority.name,
            "province": authority.province,
        }
        with self._db.transaction() as session:
            insert_ignoring_conflicts(
                session,
                enterprises,
                {"code": enterprise.code, **columns, "created_at": now_ms, "updated_at": now_ms},
            )
            # The row lock puts concurrent registrations of one enterprise in a queue.
            row = session.execute(
                select(enterprises).where(enterprises.c.code == enterprise.code).with_for_update()
            ).one()
            changes: dict[str, Any] = {
                name: value for name, value in columns.items() if row._mapping[name] != value
            }
            for role, person, column in (
                (domain.LEGAL_REPRESENTATIVE, legal_representative, "legal_representative"),
                (domain.FINANCIAL_OFFICER, financial_officer, "financial_officer"),
            ):
                current = row._mapping[f"{column}_relation_id"]
                recorded = self._record_registered_person(
                    session,
                    enterprise_code=enterprise.code,
                    role=role,
                    person=person,
                    current_id=current,
                    now_ms=now_ms,
                )
                if recorded != current:
                    changes[f"{column}_relation_id"] = recorded
            if changes:
                session.execute(
                    update(enterprises)
                    .where(enterprises.c.code == enterprise.code)
                    .values(**changes, updated_at=now_ms)
                )
            recorded_ids = [
                changes.get(f"{column}_relation_id", row._mapping[f"{column}_relation_id"])
                for column in ("legal_representative", "financial_officer")
            ]
            return enterprise, [
                self._relation(session, relation_id, now)
                for relation_id in recorded_ids
                if relation_id is not None
            ]

    def _record_registered_person(
        self,
        session: Connection,
        *,
        enterprise_code: str,
        role: Role,
        person: NamedDocument | None,
        current_id: str | None,
        now_ms: int,
    ) -> str | None:
        indexes = () if person is None else self._directory.indexes_of_document(person.document)
        if current_id is not None:
            current_index = session.scalar(
                select(relations.c.document_index).where(relations.c.relation_id == current_id)
            )
            if current_index in indexes:
                return current_id
            session.execute(
                update(relations)
                .where(relations.c.relation_id == current_id, relations.c.state.in_(LIVE_STATES))
                .values(state=REPLACED, changed_by=None, updated_at=now_ms)
            )
        if person is None:
            return None
        created = self._insert_relation(
            session,
            enterprise_code=enterprise_code,
            role=role,
            origin=Origin.REGISTRATION,
            person=person,
            indexes=indexes,
            valid_until_ms=None,
            created_by=None,
            now_ms=now_ms,
        )
        return created or self._live_relation_id(session, enterprise_code, role, indexes)

    # --- relations with two-way confirmation (F1, F3) -----------------------------------

    def apply_for_authorization(self, person_id: str, enterprise_code: str, role: Role) -> Relation:
        """F1(a): the person applies; the legal representative or financial officer
        confirms."""
        applicant = self._auth.person(person_id)
        self._directory.remember(person_id, applicant.document)
        indexes = self._directory.indexes_of_document(applicant.document)
        now = self._clock.now()
        with self._db.transaction() as session:
            self._require_enterprise(session, enterprise_code)
            return self._new_relation(
                session,
                enterprise_code=enterprise_code,
                role=role,
                origin=Origin.APPLICATION,
                person=applicant,
                indexes=indexes,
                valid_until=None,
                created_by=person_id,
                now=now,
            )

    def add_person(
        self,
        person_id: str,
        enterprise_code: str,
        person: NamedDocument,
        role: Role,
        valid_until: datetime | None,
    ) -> Relation:
        """F1(b): the legal representative or financial officer adds a person, registered
        or not, who then confirms."""
        now = self._clock.now()
        domain.ensure_future(valid_until, now, "valid_until")
        actor_indexes = self._directory.indexes_of(person_id)
        indexes = self._directory.indexes_of_document(person.document)
        self._directory.learn_if_registered(person.document)
        with self._db.transaction() as session:
            self._require_enterprise(session, enterprise_code)
            if not self._actor(session, actor_indexes, enterprise_code, to_millis(now)).is_manager:
                raise DomainError(Reason.NOT_AUTHORIZED_TO_CONFIRM)
            return self._new_relation(
                session,
                enterprise_code=enterprise_code,
                role=role,
                origin=Origin.ADDED,
                person=person,
                indexes=indexes,
                valid_until=valid_until,
                created_by=person_id,
                now=now,
            )

    def confirm_relation(self, person_id: str, relation_id: str) -> Relation:
        return self._change_relation(
            person_id, relation_id, domain.ensure_may_decide, PENDING, ACTIVE
        )

    def reject_relation(self, person_id: str, relation_id: str) -> Relation:
        return self._change_relation(
            person_id, relation_id, domain.ensure_may_decide, PENDING, REJECTED
        )

    def withdraw_relation(self, person_id: str, relation_id: str) -> Relation:
        return self._change_relation(
            person_id, relation_id, domain.ensure_may_withdraw, PENDING, WITHDRAWN
        )

    def end_relation(self, person_id: str, relation_id: str) -> Relation:
        return self._change_relation(person_id, relation_id, domain.ensure_may_end, ACTIVE, ENDED)

    def _change_relation(
        self,
        person_id: str,
        relation_id: str,
        ensure_allowed: Callable[[RelationFacts, Actor], None],
        from_state: RelationState,
        to_state: RelationState,
    ) -> Relation:
        """One state change by an entitled actor. The conditional UPDATE decides between
        concurrent changes: exactly one finds the relation still in `from_state`."""
        actor_indexes = self._directory.indexes_of(person_id)
        now = self._clock.now()
        now_ms = to_millis(now)
        with self._db.transaction() as session:
            row = session.execute(
                select(
                    relations.c.enterprise_code,
                    relations.c.origin,
                    relations.c.role,
                    relations.c.document_index,
                ).where(relations.c.relation_id == relation_id)
            ).one_or_none()
            if row is None:
                raise invalid("relation_id", Reason.NOT_FOUND)
            facts = RelationFacts(Origin(row.origin), cast(Role, row.role), row.document_index)
            ensure_allowed(facts, self._actor(session, actor_indexes, row.enterprise_code, now_ms))
            changed = session.execute(
                update(relations)
                .where(relations.c.relation_id == relation_id, _in_state(from_state, now_ms))
                .values(state=to_state, changed_by=person_id, updated_at=now_ms)
            )
            if _rowcount(changed) != 1:
                current = self._relation(session, relation_id, now)
                raise DomainError(
                    Reason.STATE_CONFLICT,
                    metadata={
                        "relation_id": relation_id,
                        "state": RelationState.Name(current.state),
                    },
                )
            changed_relation = self._relation(session, relation_id, now)
        metrics.relation_changed(row.role, to_state)
        return changed_relation

    def pending_confirmations(self, person_id: str) -> list[Relation]:
        """Relations waiting for this person's own confirmation (F1(b), F2)."""
        indexes = self._directory.indexes_of(person_id)
        now = self._clock.now()
        with self._db.reading() as session:
            rows = session.execute(
                _relations_query()
                .where(
                    relations.c.document_index.in_(indexes),
                    relations.c.origin.in_(domain.PERSON_CONFIRMS),
                    _in_state(PENDING, to_millis(now)),
                )
                .order_by(relations.c.created_at, relations.c.relation_id)
            ).all()
            return [self._relation_of(row, now) for row in rows]

    def enterprise_relations(
        self, person_id: str, enterprise_code: str, states: Collection[RelationState]
    ) -> list[Relation]:
        """The enterprise's people and applications, for its LR and FO only (F1)."""
        actor_indexes = self._directory.indexes_of(person_id)
        now = self._clock.now()
        now_ms = to_millis(now)
        with self._db.reading() as session:
            self._require_enterprise(session, enterprise_code)
            if not self._actor(session, actor_indexes, enterprise_code, now_ms).is_manager:
                raise DomainError(Reason.NOT_AUTHORIZED_TO_CONFIRM)
            query = _relations_query().where(relations.c.enterprise_code == enterprise_code)
            if states:
                query = query.where(or_(*(_in_state(state, now_ms) for state in states)))
            rows = session.execute(
                query.order_by(relations.c.created_at, relations.c.relation_id)
            ).all()
            return [self._relation_of(row, now) for row in rows]

    # --- cross-region projects (D5, F5) -------------------------------------------------

    def record_cross_region_project(
        self,
        project: Project,
        handlers: Sequence[NamedDocument],
        contacts: Sequence[NamedDocument],
    ) -> Project:
        """Records a project and the handler/contact persons of its report; a new report
        for the same project replaces them."""
        now_ms = to_millis(self._clock.now())
        authority = project.tax_authority
        columns = {
            "subject_type": project.subject_type,
            "tax_authority_code": authority.code,
            "tax_authority_name": authority.name,
            "province": authority.province,
            "updated_at": now_ms,
        }
        people = {
            (role, self._directory.index_of_document(person.document))
            for role, named in ((domain.HANDLER, handlers), (domain.CONTACT, contacts))
            for person in named
        }
        with self._db.transaction() as session:
            enterprise = self._require_enterprise(session, project.enterprise_code)
            inserted = insert_ignoring_conflicts(
                session,
                projects,
                {
                    "project_number": project.project_number,
                    "enterprise_code": project.enterprise_code,
                    **columns,
                    "created_at": now_ms,
                },
            )
            if not inserted:
                owner = session.scalar(
                    select(projects.c.enterprise_code)
                    .where(projects.c.project_number == project.project_number)
                    .with_for_update()
                )
                if owner != project.enterprise_code:
                    raise invalid("project_number", Reason.STATE_CONFLICT)
                session.execute(
                    update(projects)
                    .where(projects.c.project_number == project.project_number)
                    .values(**columns)
                )
                session.execute(
                    delete(project_people).where(
                        project_people.c.project_number == project.project_number
                    )
                )
            if people:
                session.execute(
                    project_people.insert(),
                    [
                        {
                            "project_number": project.project_number,
                            "role": r,
                            "document_index": i,
                            "index_key_id": self._directory.active_key_id,
                        }
                        for r, i in sorted(people)
                    ],
                )
        return Project(
            project.project_number,
            project.subject_type,
            enterprise.code,
            enterprise.name,
            authority,
        )

    def search_subjects(
        self, person_id: str, subject_type: SubjectType, query: str, province: str
    ) -> list[Project]:
        """D5: the person's related subjects whose USCC/TIN or project number contains
        `query`."""
        related = self.related_projects(person_id, province)
        found = [p for p in related if domain.matches_query(p, subject_type, query)]
        return found[:_SEARCH_LIMIT]

    def related_projects(self, person_id: str, province: str) -> list[Project]:
        """D5 "switch tax authority": the projects in the province the person may act for."""
        indexes = self._directory.indexes_of(person_id)
        now_ms = to_millis(self._clock.now())
        with self._db.reading() as session:
            roles = self._roles_by_enterprise(session, indexes, now_ms)
            return [a.project for a in self._project_access(session, indexes, roles, province)]

    # --- tax agents (F4) ----------------------------------------------------------------

    def submit_agency_information(
        self, agency_code: str, name: str, agents: Sequence[NamedDocument]
    ) -> int:
        """The agency's basic-information form; a new one replaces the list of agents."""
        now_ms = to_millis(self._clock.now())
        indexes = sorted({self._directory.index_of_document(a.document) for a in agents})
        with self._db.transaction() as session:
            inserted = insert_ignoring_conflicts(
                session,
                agencies,
                {
                    "agency_code": agency_code,
                    "name": name,
                    "created_at": now_ms,
                    "updated_at": now_ms,
                },
            )
            if not inserted:
                session.execute(
                    update(agencies)
                    .where(agencies.c.agency_code == agency_code)
                    .values(name=name, updated_at=now_ms)
                )
                session.execute(
                    delete(agency_agents).where(agency_agents.c.agency_code == agency_code)
                )
            if indexes:
                session.execute(
                    agency_agents.insert(),
                    [
                        {
                            "agency_code": agency_code,
                            "document_index": i,
                            "index_key_id": self._directory.active_key_id,
                        }
                        for i in indexes
                    ],
                )
        return len(indexes)

    def submit_agency_agreement(
        self,
        agency_code: str,
        client_code: str,
        agents: Sequence[Document],
        valid_from: datetime | None,
        valid_until: datetime,
    ) -> str:
        """The agreement form for one client; a new one for the same client replaces the
        agents and the validity period."""
        now = self._clock.now()
        now_ms = to_millis(now)
        start, end = domain.agreement_period(valid_from, valid_until, now)
        indexes = sorted({self._directory.index_of_document(a) for a in agents})
        period = {"valid_from": to_millis(start), "valid_until": to_millis(end)}
        with self._db.transaction() as session:
            known_agency = session.scalar(
                select(agencies.c.agency_code).where(agencies.c.agency_code == agency_code)
            )
            if known_agency is None:
                raise invalid("agency_code", Reason.NOT_FOUND)
            agreement_id = uuid.uuid4().hex
            inserted = insert_ignoring_conflicts(
                session,
                agreements,
                {
                    "agreement_id": agreement_id,
                    "agency_code": agency_code,
                    "client_code": client_code,
                    **period,
                    "created_at": now_ms,
                    "updated_at": now_ms,
                },
            )
            if not inserted:
                agreement_id = session.execute(
                    select(agreements.c.agreement_id)
                    .where(
                        agreements.c.agency_code == agency_code,
                        agreements.c.client_code == client_code,
                    )
                    .with_for_update()
                ).scalar_one()
                session.execute(
                    update(agreements)
                    .where(agreements.c.agreement_id == agreement_id)
                    .values(**period, updated_at=now_ms)
                )
                session.execute(
                    delete(agreement_agents).where(agreement_agents.c.agreement_id == agreement_id)
                )
            session.execute(
                agreement_agents.insert(),
                [
                    {
                        "agreement_id": agreement_id,
                        "document_index": i,
                        "index_key_id": self._directory.active_key_id,
                    }
                    for i in indexes
                ],
            )
        return agreement_id

    # --- access and identities (D5, F3, F4, F5) -----------------------------------------

    def check_access(self, person_id: str, target: Target) -> Identity:
        """May the person act as the target, and as what? RELATION_NOT_FOUND otherwise."""
        if target.entry == Entry.ENTRY_NATURAL_PERSON:
            return Identity(Entry.ENTRY_NATURAL_PERSON)
        indexes = self._directory.indexes_of(person_id)
        now_ms = to_millis(self._clock.now())
        with self._db.reading() as session:
            if target.entry == Entry.ENTRY_AGENT:
                clients = self._agent_clients(session, indexes, now_ms, target.agency_code)
                return domain.agent_identity(clients, target)
            if target.entry == Entry.ENTRY_ENTERPRISE and not target.subject_number:
                row = session.execute(_ENTERPRISE, {"code": target.enterprise_code}).one_or_none()
                if row is None:
                    raise domain.relation_not_found()
                roles = self._roles_by_enterprise(session, indexes, now_ms, target.enterprise_code)
                return domain.enterprise_identity(
                    _enterprise(row), roles.get(target.enterprise_code, ())
                )
            roles = self._roles_by_enterprise(session, indexes, now_ms)
            accesses = self._project_access(session, indexes, roles, target.province)
            return domain.subject_identity(accesses, target)

    def identities(self, person_id: str, province: str) -> list[Identity]:
        """Everything the person may act as (F3, F4, F5): the natural person first, then
        enterprises with their role, cross-region projects in the province (all provinces if
        empty), agent clients."""
        indexes = self._directory.indexes_of(person_id)
        now_ms = to_millis(self._clock.now())
        with self._db.reading() as session:
            roles = self._roles_by_enterprise(session, indexes, now_ms)
            rows = session.execute(
                select(enterprises)
                .where(enterprises.c.code.in_(roles))
                .order_by(enterprises.c.code)
            ).all()
            found = [Identity(Entry.ENTRY_NATURAL_PERSON)]
            found += [domain.enterprise_identity(_enterprise(r), roles[r.code]) for r in rows]
            found += [
                access.listed_identity()
                for access in self._project_access(session, indexes, roles, province)
            ]
            found += [client.identity() for client in self._agent_clients(session, indexes, now_ms)]
            return found

    # --- queries ------------------------------------------------------------------------

    def _roles_by_enterprise(
        self, session: Connection, indexes: Indexes, now_ms: int, enterprise_code: str | None = None
    ) -> dict[str, frozenset[Role]]:
        """The person's active relations, as roles per enterprise."""
        if enterprise_code is None:
            rows = session.execute(_ACTIVE_ROLES, {"indexes": list(indexes), "now_ms": now_ms})
        else:
            rows = session.execute(
                _ACTIVE_ROLES_IN,
                {"indexes": list(indexes), "now_ms": now_ms, "enterprise_code": enterprise_code},
            )
        roles: defaultdict[str, set[Role]] = defaultdict(set)
        for code, role in rows:
            roles[code].add(cast(Role, role))
        return {code: frozenset(held) for code, held in roles.items()}

    def _project_access(
        self,
        session: Connection,
        indexes: Indexes,
        roles_by_enterprise: Mapping[str, frozenset[Role]],
        province: str,
    ) -> list[ProjectAccess]:
        """D5: projects the person is related to (in the province, if given), through an
        enterprise role that reaches projects or as a handler/contact of the report."""
        enterprise_roles = {
            code: held & domain.PROJECT_ROLES
            for code, held in roles_by_enterprise.items()
            if held & domain.PROJECT_ROLES
        }
        report_roles: defaultdict[str, set[Role]] = defaultdict(set)
        for number, role in session.execute(_REPORT_ROLES, {"indexes": list(indexes)}):
            report_roles[number].add(cast(Role, role))
        if not enterprise_roles and not report_roles:
            return []
        rows = session.execute(
            _PROJECTS_IN_PROVINCE if province else _PROJECTS,
            {
                "codes": list(enterprise_roles),
                "numbers": list(report_roles),
                "province": province,
            },
        )
        return [
            ProjectAccess(
                Project(
                    row.project_number,
                    cast(SubjectType, row.subject_type),
                    row.enterprise_code,
                    row.enterprise_name,
                    _tax_authority(row),
                ),
                row.home_province,
                enterprise_roles.get(row.enterprise_code, frozenset()),
                frozenset(report_roles.get(row.project_number, ())),
            )
            for row in rows
        ]

    def _agent_clients(
        self, session: Connection, indexes: Indexes, now_ms: int, agency_code: str | None = None
    ) -> list[AgentClient]:
        """F4: clients whose agreement names the person and is in force now, of agencies
        whose basic-information form lists the person."""
        parameters = {"indexes": list(indexes), "now_ms": now_ms, "agency_code": agency_code}
        rows = session.execute(
            _AGENT_CLIENTS if agency_code is None else _AGENT_CLIENTS_OF, parameters
        )
        return [
            AgentClient(
                row.agency_code,
                row.client_code,
                None if row.code is None else _enterprise(row),
            )
            for row in rows
        ]

    # --- helpers ------------------------------------------------------------------------

    def _require_enterprise(self, session: Connection, code: str) -> Enterprise:
        row = session.execute(_ENTERPRISE, {"code": code}).one_or_none()
        if row is None:
            raise invalid("enterprise_code", Reason.NOT_FOUND)
        return _enterprise(row)

    def _actor(
        self, session: Connection, indexes: Indexes, enterprise_code: str, now_ms: int
    ) -> Actor:
        roles = self._roles_by_enterprise(session, indexes, now_ms, enterprise_code)
        held = roles.get(enterprise_code, frozenset())
        return Actor(frozenset(indexes), bool(held & domain.MANAGER_ROLES))

    def _insert_relation(
        self,
        session: Connection,
        *,
        enterprise_code: str,
        role: Role,
        origin: Origin,
        person: NamedDocument,
        indexes: Indexes,
        valid_until_ms: int | None,
        created_by: str | None,
        now_ms: int,
    ) -> str | None:
        """A new pending relation, or None when a live one exists for the same
        enterprise, role and person (the unique index decides, F1)."""
        # Expired relations stop counting as live, so they do not block a new one.
        session.execute(
            update(relations)
            .where(
                relations.c.enterprise_code == enterprise_code,
                relations.c.role == role,
                relations.c.document_index.in_(indexes),
                relations.c.state.in_(LIVE_STATES),
                relations.c.valid_until <= now_ms,
            )
            .values(state=EXPIRED, updated_at=now_ms)
        )
        # A live one under an older key (before its rows are moved) counts too; nobody
        # writes under an older key any more, so this read races with nothing.
        older = indexes[1:]
        if older and self._live_relation_id(session, enterprise_code, role, older) is not None:
            return None
        relation_id = uuid.uuid4().hex
        inserted = insert_ignoring_conflicts(
            session,
            relations,
            {
                "relation_id": relation_id,
                "enterprise_code": enterprise_code,
                "role": role,
                "state": PENDING,
                "origin": origin.value,
                "document_index": indexes[0],
                "index_key_id": self._directory.active_key_id,
                "document_type": person.document.type,
                "document_number_encrypted": self._personal_data.encrypt(
                    person.document.number, _DOCUMENT_NUMBER
                ),
                "person_name_encrypted": self._personal_data.encrypt(person.name, _PERSON_NAME),
                "valid_until": valid_until_ms,
                "created_by": created_by,
                "changed_by": created_by,
                "created_at": now_ms,
                "updated_at": now_ms,
            },
        )
        return relation_id if inserted else None

    def _live_relation_id(
        self, session: Connection, enterprise_code: str, role: Role, indexes: Indexes
    ) -> str | None:
        return session.scalar(
            select(relations.c.relation_id).where(
                relations.c.enterprise_code == enterprise_code,
                relations.c.role == role,
                relations.c.document_index.in_(indexes),
                relations.c.state.in_(LIVE_STATES),
            )
        )

    def _new_relation(
        self,
        session: Connection,
        *,
        enterprise_code: str,
        role: Role,
        origin: Origin,
        person: NamedDocument,
        indexes: Indexes,
        valid_until: datetime | None,
        created_by: str,
        now: datetime,
    ) -> Relation:
        """A new pending relation asked for by a person (F1); STATE_CONFLICT, naming the
        existing one, when the person already has a live relation in that role."""
        relation_id = self._insert_relation(
            session,
            enterprise_code=enterprise_code,
            role=role,
            origin=origin,
            person=person,
            indexes=indexes,
            valid_until_ms=_millis(valid_until),
            created_by=created_by,
            now_ms=to_millis(now),
        )
        if relation_id is None:
            existing = self._live_relation_id(session, enterprise_code, role, indexes)
            raise DomainError(
                Reason.STATE_CONFLICT, _ALREADY_RELATED, metadata={"relation_id": existing or ""}
            )
        return self._relation(session, relation_id, now)

    def _relation(self, session: Connection, relation_id: str, now: datetime) -> Relation:
        row = session.execute(
            _relations_query().where(relations.c.relation_id == relation_id)
        ).one()
        return self._relation_of(row, now)

    def _relation_of(self, row: AnyRow, now: datetime) -> Relation:
        number = self._personal_data.decrypt(row.document_number_encrypted, _DOCUMENT_NUMBER)
        name = self._personal_data.decrypt(row.person_name_encrypted, _PERSON_NAME)
        valid_until = _instant(row.valid_until)
        origin = Origin(row.origin)
        return Relation(
            relation_id=row.relation_id,
            enterprise_code=row.enterprise_code,
            enterprise_name=row.enterprise_name,
            role=cast(Role, row.role),
            state=domain.effective_state(cast(RelationState, row.state), valid_until, now),
            confirming_party=domain.confirming_party(origin),
            masked_person_name=mask_name(name),
            masked_document_number=mask_document(number),
            person_id=row.person_id or "",
            valid_until=valid_until,
            created_at=from_millis(row.created_at),
        )
