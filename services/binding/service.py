"""Binding's use cases: the persons auth knows, the rules of domain.py, and storage.py
(every statement lives there).

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
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import cast

import grpc
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.binding.v1.binding_pb2 import RelationState
from etax.common.v1 import types_pb2
from etax.common.v1.types_pb2 import Role, SubjectType

from etax_platform.clients import Dependency
from etax_platform.clock import Clock, from_timestamp, to_millis, to_timestamp
from etax_platform.db import Database
from etax_platform.documents import Document
from etax_platform.errors import DomainError
from etax_platform.keyrings import HmacKeyring
from etax_platform.pii import PersonalData
from etax_platform.revocation import Revocations
from services.binding import domain, metrics
from services.binding.domain import (
    ACTIVE,
    ENDED,
    PENDING,
    REJECTED,
    WITHDRAWN,
    Actor,
    Enterprise,
    Identity,
    NamedDocument,
    Origin,
    Project,
    Relation,
    RelationFacts,
    Target,
)
from services.binding.storage import BindingStore, Indexes

log = logging.getLogger("etax.binding")

_REMEMBER_AT_MOST = 100_000
_SEARCH_LIMIT = 50
# HMAC purpose of a document's blind index: with the platform's old PII index key as a key
# of binding's keyring, the digest is the index binding stored before it had keys of its
# own (etax_platform.documents.document_blind_index).
INDEX_PURPOSE = "document"


class Auth:
    """The calls binding makes to auth, each with a deadline."""

    def __init__(self, channel: grpc.Channel, timeout: float) -> None:
        self._internal = auth_pb2_grpc.InternalAuthServiceStub(channel)
        self._public = auth_pb2_grpc.AuthServiceStub(channel)
        self._dependency = Dependency("auth", channel, timeout)

    def person(self, person_id: str) -> NamedDocument:
        response = self._dependency.call(
            self._internal.GetPerson,
            auth_pb2.GetPersonRequest(person_id=person_id),
        )
        identity = response.person.identity
        document = domain.document(identity.document.type, identity.document.number, "person")
        return NamedDocument(document, " ".join(identity.name.split()))

    def registered_person_id(self, document: Document) -> str | None:
        response = self._dependency.call(
            self._internal.ResolvePerson,
            auth_pb2.ResolvePersonRequest(
                document=types_pb2.Document(
                    type=cast(types_pb2.DocumentType, int(document.type)), number=document.number
                )
            ),
        )
        return response.person_id if response.registered and response.person_id else None

    def public_keys(self) -> list[dict[str, str]]:
        response = self._dependency.call(
            self._public.GetPublicKeys,
            auth_pb2.GetPublicKeysRequest(),
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
        response = self._dependency.call(self._internal.ListRevokedSessions, request)
        return Revocations(
            session_ids=list(response.session_ids),
            as_of=from_timestamp(response.as_of),
            retain_for=response.retain_for.ToTimedelta(),
        )


def document_message(document: Document) -> str:
    """What a document's blind index is the MAC of (the type and the normalised number)."""
    return f"{int(document.type)}:{document.number}"


class PersonDirectory:
    """Documents' blind indexes under binding's keyring, and person_id <-> document index,
    learnt from auth and kept in `person_documents` (under the active key)."""

    def __init__(self, store: BindingStore, keyring: HmacKeyring, clock: Clock, auth: Auth):
        self._store = store
        self._keyring = keyring
        self._clock = clock
        self._auth = auth
        self._indexes: dict[str, Indexes] = {}

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
            known = self._store.document_index_of(person_id)
            if known is not None and known[1] == self._keyring.active_id:
                return (known[0],)
        document = self._auth.person(person_id).document
        self.remember(person_id, document)
        return self.indexes_of_document(document)

    def remember(self, person_id: str, document: Document) -> str:
        """Keeps person_id <-> the document's active index; returns that index. During a
        rotation (older keys held) the person's rows move to the active key as well."""
        index = self.index_of_document(document)
        older = self.indexes_of_document(document)[1:]
        self._store.remember_person(person_id, index, older, to_millis(self._clock.now()))
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


class BindingService:
    def __init__(
        self,
        db: Database,
        personal_data: PersonalData,
        index_keys: HmacKeyring,
        clock: Clock,
        auth: Auth,
    ):
        self._store = BindingStore(db, personal_data, index_keys.active_id)
        self._clock = clock
        self._directory = PersonDirectory(self._store, index_keys, clock, auth)
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
        people = [
            (
                role,
                person,
                () if person is None else self._directory.indexes_of_document(person.document),
            )
            for role, person in (
                (domain.LEGAL_REPRESENTATIVE, legal_representative),
                (domain.FINANCIAL_OFFICER, financial_officer),
            )
        ]
        return enterprise, self._store.record_registration(enterprise, people, self._clock.now())

    # --- relations with two-way confirmation (F1, F3) -----------------------------------

    def apply_for_authorization(self, person_id: str, enterprise_code: str, role: Role) -> Relation:
        """F1(a): the person applies; the legal representative or financial officer
        confirms."""
        applicant = self._auth.person(person_id)
        self._directory.remember(person_id, applicant.document)
        return self._store.new_relation(
            enterprise_code=enterprise_code,
            role=role,
            origin=Origin.APPLICATION,
            person=applicant,
            indexes=self._directory.indexes_of_document(applicant.document),
            valid_until=None,
            created_by=person_id,
            now=self._clock.now(),
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
        actor = self._directory.indexes_of(person_id)
        indexes = self._directory.indexes_of_document(person.document)
        self._directory.learn_if_registered(person.document)
        return self._store.new_relation(
            enterprise_code=enterprise_code,
            role=role,
            origin=Origin.ADDED,
            person=person,
            indexes=indexes,
            valid_until=valid_until,
            created_by=person_id,
            now=now,
            manager=actor,
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
        changed = self._store.change_relation(
            relation_id=relation_id,
            actor=self._directory.indexes_of(person_id),
            ensure_allowed=ensure_allowed,
            from_state=from_state,
            to_state=to_state,
            changed_by=person_id,
            now=self._clock.now(),
        )
        metrics.relation_changed(changed.role, to_state)
        return changed

    def pending_confirmations(self, person_id: str) -> list[Relation]:
        """Relations waiting for this person's own confirmation (F1(b), F2)."""
        indexes = self._directory.indexes_of(person_id)
        return self._store.pending_confirmations(indexes, self._clock.now())

    def enterprise_relations(
        self, person_id: str, enterprise_code: str, states: Collection[RelationState]
    ) -> list[Relation]:
        """The enterprise's people and applications, for its LR and FO only (F1)."""
        actor = self._directory.indexes_of(person_id)
        return self._store.enterprise_relations(actor, enterprise_code, states, self._clock.now())

    # --- cross-region projects (D5, F5) -------------------------------------------------

    def record_cross_region_project(
        self,
        project: Project,
        handlers: Sequence[NamedDocument],
        contacts: Sequence[NamedDocument],
    ) -> Project:
        """Records a project and the handler/contact persons of its report; a new report
        for the same project replaces them."""
        people = {
            (role, self._directory.index_of_document(person.document))
            for role, named in ((domain.HANDLER, handlers), (domain.CONTACT, contacts))
            for person in named
        }
        enterprise = self._store.record_project(project, people, to_millis(self._clock.now()))
        return Project(
            project.project_number,
            project.subject_type,
            enterprise.code,
            enterprise.name,
            project.tax_authority,
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
        return [a.project for a in self._store.subject_access(indexes, now_ms, province)]

    # --- tax agents (F4) ----------------------------------------------------------------

    def submit_agency_information(
        self, agency_code: str, name: str, agents: Sequence[NamedDocument]
    ) -> int:
        """The agency's basic-information form; a new one replaces the list of agents."""
        indexes = sorted({self._directory.index_of_document(a.document) for a in agents})
        self._store.record_agency_information(
            agency_code, name, indexes, to_millis(self._clock.now())
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
        period = domain.agreement_period(valid_from, valid_until, now)
        indexes = sorted({self._directory.index_of_document(a) for a in agents})
        return self._store.record_agreement(
            agency_code, client_code, indexes, period, to_millis(now)
        )

    # --- access and identities (D5, F3, F4, F5): one statement each --------------------

    def check_access(self, person_id: str, target: Target) -> Identity:
        """May the person act as the target, and as what? RELATION_NOT_FOUND otherwise."""
        if target.entry == types_pb2.ENTRY_NATURAL_PERSON:
            return Identity(types_pb2.ENTRY_NATURAL_PERSON)
        indexes = self._directory.indexes_of(person_id)
        now_ms = to_millis(self._clock.now())
        if target.entry == types_pb2.ENTRY_AGENT:
            clients = self._store.agent_clients(indexes, now_ms, target.agency_code)
            return domain.agent_identity(clients, target)
        if target.entry == types_pb2.ENTRY_ENTERPRISE and not target.subject_number:
            found = self._store.enterprise_access(indexes, now_ms, target.enterprise_code)
            if found is None:
                raise domain.relation_not_found()
            return domain.enterprise_identity(*found)
        accesses = self._store.subject_access(indexes, now_ms, target.province)
        return domain.subject_identity(accesses, target)

    def identities(self, person_id: str, province: str) -> list[Identity]:
        """Everything the person may act as (F3, F4, F5): the natural person first, then
        enterprises with their role, cross-region projects in the province (all provinces if
        empty), agent clients."""
        indexes = self._directory.indexes_of(person_id)
        access = self._store.identities(indexes, to_millis(self._clock.now()), province)
        found = [Identity(types_pb2.ENTRY_NATURAL_PERSON)]
        found += [domain.enterprise_identity(e, access.roles[e.code]) for e in access.enterprises]
        found += [project.listed_identity() for project in access.projects]
        found += [client.identity() for client in access.agent_clients]
        return found
