"""The rules of binding (A2, D5, F1-F5): values, input checks, and who may do what.

Pure: no storage and no network; the time comes in as an argument. Enumerations are the
contract's own (etax.common.v1, etax.binding.v1), so values pass to and from the wire
unchanged.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from etax.binding.v1.binding_pb2 import ConfirmingParty, RelationState
from etax.common.v1 import types_pb2
from etax.common.v1.types_pb2 import Entry, Role, SubjectType

from etax_platform.documents import Document, parse_document
from etax_platform.enterprise_codes import normalize_enterprise_code
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.identifiers import normalize_subject_number, require_tax_authority_code

# Values are read as module constants (types_pb2.ENTRY_ENTERPRISE), not through the enum's
# wrapper (Entry.ENTRY_ENTERPRISE): the wrapper looks each up in Python, 2 µs a time on the
# AMD EPYC, about ten times per CheckAccess.
LEGAL_REPRESENTATIVE = types_pb2.ROLE_LEGAL_REPRESENTATIVE
FINANCIAL_OFFICER = types_pb2.ROLE_FINANCIAL_OFFICER
TAX_OFFICER = types_pb2.ROLE_TAX_OFFICER
INVOICE_OFFICER = types_pb2.ROLE_INVOICE_OFFICER
HANDLER = types_pb2.ROLE_CROSS_REGION_HANDLER
CONTACT = types_pb2.ROLE_CROSS_REGION_CONTACT
TAX_AGENT = types_pb2.ROLE_TAX_AGENT

PENDING = RelationState.RELATION_STATE_PENDING
ACTIVE = RelationState.RELATION_STATE_ACTIVE
REJECTED = RelationState.RELATION_STATE_REJECTED
WITHDRAWN = RelationState.RELATION_STATE_WITHDRAWN
ENDED = RelationState.RELATION_STATE_ENDED
REPLACED = RelationState.RELATION_STATE_REPLACED
EXPIRED = RelationState.RELATION_STATE_EXPIRED
# A relation that still counts: at most one per enterprise, person and role.
LIVE_STATES: tuple[RelationState, ...] = (PENDING, ACTIVE)

# F1: only they confirm applications, add people and remove others.
MANAGER_ROLES = frozenset({LEGAL_REPRESENTATIVE, FINANCIAL_OFFICER})
# F1: what a person may apply for, or be added as; LR and FO come from registration (A2).
GRANTABLE_ROLES = frozenset({TAX_OFFICER, INVOICE_OFFICER})
# D5, F5: the enterprise roles that reach its cross-region projects.
PROJECT_ROLES = frozenset({LEGAL_REPRESENTATIVE, FINANCIAL_OFFICER, TAX_OFFICER})
# D5: the persons a cross-region report names.
REPORT_ROLES = frozenset({HANDLER, CONTACT})
# When a person holds several roles, the identity shows the first.
_ROLE_PRECEDENCE = (
    LEGAL_REPRESENTATIVE,
    FINANCIAL_OFFICER,
    TAX_OFFICER,
    INVOICE_OFFICER,
    HANDLER,
    CONTACT,
    TAX_AGENT,
)

KNOWN_SUBJECT_TYPES = frozenset(
    value for value in SubjectType.values() if value != types_pb2.SUBJECT_TYPE_UNSPECIFIED
)
# GB/T 2260 province-level codes.
# fmt: off
PROVINCES = frozenset((
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34",
    "35", "36", "37", "41", "42", "43", "44", "45", "46", "50", "51", "52",
    "53", "54", "61", "62", "63", "64", "65", "71", "81", "82",
))
# fmt: on

_SEARCH_QUERY = re.compile(r"[0-9A-Z-]{0,64}")
_OPAQUE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
_MAX_NAME = 100
_MAX_ORGANISATION_NAME = 200


class Origin(enum.StrEnum):
    """Who asked for a relation; the other side confirms it (F1, F2)."""

    REGISTRATION = "registration"  # A2, F2: the core tax system; the person confirms
    ADDED = "added"  # F1(b): the LR or FO added the person; the person confirms
    APPLICATION = "application"  # F1(a): the person applied; the LR or FO confirms


@dataclass(frozen=True)
class NamedDocument:
    document: Document
    name: str


@dataclass(frozen=True)
class TaxAuthority:
    code: str
    name: str
    province: str


@dataclass(frozen=True)
class Enterprise:
    code: str
    name: str
    tax_authority: TaxAuthority


@dataclass(frozen=True)
class Project:
    project_number: str
    subject_type: SubjectType
    enterprise_code: str
    enterprise_name: str
    tax_authority: TaxAuthority


@dataclass(frozen=True)
class Relation:
    """A relation as shown: personal numbers masked, state as of now."""

    relation_id: str
    enterprise_code: str
    enterprise_name: str
    role: Role
    state: RelationState
    confirming_party: ConfirmingParty
    masked_person_name: str
    masked_document_number: str
    person_id: str
    valid_until: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class Identity:
    """Something a person may log in as or switch to."""

    entry: Entry
    role: Role = types_pb2.ROLE_UNSPECIFIED
    enterprise_code: str = ""
    enterprise_name: str = ""
    subject_type: SubjectType = types_pb2.SUBJECT_TYPE_UNSPECIFIED
    project_number: str = ""
    agency_code: str = ""
    client_code: str = ""
    client_name: str = ""
    tax_authority: TaxAuthority | None = None


@dataclass(frozen=True)
class Target:
    """What a login or identity switch asks to act as (validated by `target`)."""

    entry: Entry
    enterprise_code: str = ""
    agency_code: str = ""
    client_code: str = ""
    subject_type: SubjectType = types_pb2.SUBJECT_TYPE_UNSPECIFIED
    subject_number: str = ""
    province: str = ""


# --- input -----------------------------------------------------------------------------


def document(type_: int, number: str, field_name: str) -> Document:
    """A validated, normalised document: the rules and normal form auth uses, so the
    document a form names and the one auth returns for a person are the same value, with
    the same blind index under binding's keys (etax_platform.documents)."""
    return parse_document(
        type_, number, type_field=f"{field_name}.type", number_field=f"{field_name}.number"
    )


def person_name(raw: str, field_name: str) -> str:
    return _printable(raw, field_name, _MAX_NAME)


def named_document(type_: int, number: str, name: str, field_name: str) -> NamedDocument:
    return NamedDocument(
        document(type_, number, f"{field_name}.document"), person_name(name, f"{field_name}.name")
    )


def organisation_name(raw: str, field_name: str) -> str:
    return _printable(raw, field_name, _MAX_ORGANISATION_NAME)


def _printable(raw: str, field_name: str, max_length: int) -> str:
    text = " ".join(raw.split())
    if not text or len(text) > max_length:
        raise invalid(field_name)
    if any(unicodedata.category(char).startswith("C") for char in text):
        raise invalid(field_name)
    return text


def enterprise_code(raw: str, field_name: str) -> str:
    return normalize_enterprise_code(raw, field_name)


def province(raw: str, field_name: str) -> str:
    value = raw.strip()
    if value not in PROVINCES:
        raise invalid(field_name)
    return value


def tax_authority(code: str, name: str, province_code: str, field_name: str) -> TaxAuthority:
    return TaxAuthority(
        require_tax_authority_code(code.strip(), f"{field_name}.code"),
        organisation_name(name, f"{field_name}.name"),
        province(province_code, f"{field_name}.province"),
    )


def search_query(raw: str, field_name: str) -> str:
    """Part of a subject number; only characters that can occur in one (no wildcards)."""
    value = raw.strip().upper()
    if not _SEARCH_QUERY.fullmatch(value):
        raise invalid(field_name)
    return value


def subject_type(value: int, field_name: str, *, required: bool) -> SubjectType:
    if value == types_pb2.SUBJECT_TYPE_UNSPECIFIED and not required:
        return types_pb2.SUBJECT_TYPE_UNSPECIFIED
    if value not in KNOWN_SUBJECT_TYPES:
        raise invalid(field_name)
    return cast(SubjectType, value)


def grantable_role(value: int, field_name: str) -> Role:
    if value not in GRANTABLE_ROLES:
        raise invalid(field_name)
    return cast(Role, value)


def opaque_id(raw: str, field_name: str) -> str:
    """A relation id or person id: short, plain characters."""
    if not _OPAQUE_ID.fullmatch(raw):
        raise invalid(field_name)
    return raw


def relation_states(values: Iterable[int], field_name: str) -> frozenset[RelationState]:
    known = set(RelationState.values()) - {RelationState.RELATION_STATE_UNSPECIFIED}
    states = frozenset(values)
    if not states <= known:
        raise invalid(field_name)
    return frozenset(cast(RelationState, state) for state in states)


def target(
    *,
    entry: int,
    enterprise_code_: str,
    agency_code: str,
    client_code: str,
    subject_type_: int,
    subject_number: str,
    province_: str,
) -> Target:
    """A login target with what its entry needs (field names as in CheckAccessRequest)."""
    province_code = province(province_, "target.province") if province_.strip() else ""
    if entry == types_pb2.ENTRY_NATURAL_PERSON:
        return Target(types_pb2.ENTRY_NATURAL_PERSON, province=province_code)
    if entry == types_pb2.ENTRY_ENTERPRISE:
        # A project number switches to a home-province cross-region project (F5).
        number = subject_number.strip()
        return Target(
            types_pb2.ENTRY_ENTERPRISE,
            enterprise_code=enterprise_code(enterprise_code_, "target.enterprise_code"),
            subject_type=subject_type(subject_type_, "target.subject_type", required=False),
            subject_number=normalize_subject_number(number, "target.subject_number")
            if number
            else "",
            province=province_code,
        )
    if entry == types_pb2.ENTRY_AGENT:
        client = client_code.strip()
        return Target(
            types_pb2.ENTRY_AGENT,
            agency_code=enterprise_code(agency_code, "target.agency_code"),
            client_code=enterprise_code(client, "target.client_code") if client else "",
            province=province_code,
        )
    if entry == types_pb2.ENTRY_SPECIFIC_SUBJECT:
        if not province_code:
            raise invalid("target.province")
        return Target(
            types_pb2.ENTRY_SPECIFIC_SUBJECT,
            subject_type=subject_type(subject_type_, "target.subject_type", required=True),
            subject_number=normalize_subject_number(subject_number, "target.subject_number"),
            province=province_code,
        )
    raise invalid("target.entry")


# --- relations -------------------------------------------------------------------------


def confirming_party(origin: Origin) -> ConfirmingParty:
    if origin is Origin.APPLICATION:
        return ConfirmingParty.CONFIRMING_PARTY_ENTERPRISE
    return ConfirmingParty.CONFIRMING_PARTY_PERSON


# The origins whose relations wait for the person's own confirmation.
PERSON_CONFIRMS = tuple(
    origin
    for origin in Origin
    if confirming_party(origin) == ConfirmingParty.CONFIRMING_PARTY_PERSON
)


def effective_state(
    state: RelationState, valid_until: datetime | None, now: datetime
) -> RelationState:
    """A pending or active relation past its end date counts as expired (F1)."""
    if state in LIVE_STATES and valid_until is not None and valid_until <= now:
        return EXPIRED
    return state


def primary_role(roles: Iterable[Role]) -> Role:
    held = set(roles)
    return next((role for role in _ROLE_PRECEDENCE if role in held), types_pb2.ROLE_UNSPECIFIED)


@dataclass(frozen=True)
class RelationFacts:
    """What the permission rules need to know about a relation."""

    origin: Origin
    role: Role
    document_index: str


@dataclass(frozen=True)
class Actor:
    """The person acting, as far as one enterprise is concerned."""

    # The person's document under every blind-index key binding holds (a rotation).
    document_indexes: frozenset[str]
    # Holds an active legal representative or financial officer relation (F1).
    is_manager: bool


def ensure_may_decide(relation: RelationFacts, actor: Actor) -> None:
    """Confirm or reject: the person for F1(b) and F2, the LR or FO for F1(a), and never
    the applicant for their own application."""
    is_subject = relation.document_index in actor.document_indexes
    if confirming_party(relation.origin) == ConfirmingParty.CONFIRMING_PARTY_PERSON:
        allowed = is_subject
    else:
        allowed = actor.is_manager and not is_subject
    if not allowed:
        raise DomainError(Reason.NOT_AUTHORIZED_TO_CONFIRM)


def ensure_may_withdraw(relation: RelationFacts, actor: Actor) -> None:
    """Only the side that asked withdraws; a registration is changed by a new one (A2)."""
    if relation.origin is Origin.REGISTRATION:
        raise DomainError(Reason.PERMISSION_DENIED)
    if relation.origin is Origin.APPLICATION:
        allowed = relation.document_index in actor.document_indexes
    else:
        allowed = actor.is_manager
    if not allowed:
        raise DomainError(Reason.NOT_AUTHORIZED_TO_CONFIRM)


def ensure_may_end(relation: RelationFacts, actor: Actor) -> None:
    """The person ends their own relation; the LR or FO ends others', except the LR and FO
    relations themselves, which only the person or a new registration change (A2)."""
    if relation.document_index in actor.document_indexes:
        return
    if not actor.is_manager or relation.role in MANAGER_ROLES:
        raise DomainError(Reason.NOT_AUTHORIZED_TO_CONFIRM)


def ensure_future(valid_until: datetime | None, now: datetime, field_name: str) -> None:
    if valid_until is not None and valid_until <= now:
        raise invalid(field_name)


def agreement_period(
    valid_from: datetime | None, valid_until: datetime, now: datetime
) -> tuple[datetime, datetime]:
    """F4: an agreement runs from valid_from (default: now) until valid_until."""
    start = now if valid_from is None else valid_from
    if valid_until <= start:
        raise invalid("valid_until")
    return start, valid_until


# --- access (D5, F3, F4, F5) -----------------------------------------------------------


def relation_not_found() -> DomainError:
    """The one answer for every refused login target, with its exact user text."""
    return DomainError(Reason.RELATION_NOT_FOUND)


def enterprise_identity(enterprise: Enterprise, roles: Iterable[Role]) -> Identity:
    """F3: any active relation lets the person in, in their foremost role."""
    role = primary_role(roles)
    if role == types_pb2.ROLE_UNSPECIFIED:
        raise relation_not_found()
    return Identity(
        types_pb2.ENTRY_ENTERPRISE,
        role=role,
        enterprise_code=enterprise.code,
        enterprise_name=enterprise.name,
        tax_authority=enterprise.tax_authority,
    )


@dataclass(frozen=True)
class ProjectAccess:
    """A cross-region project and how one person is related to it (D5): through an
    enterprise role in PROJECT_ROLES, or as a handler/contact of its report."""

    project: Project
    # The enterprise's home province (its competent tax authority's).
    home_province: str
    enterprise_roles: frozenset[Role]
    report_roles: frozenset[Role]

    @property
    def role(self) -> Role:
        return primary_role(self.enterprise_roles or self.report_roles)

    @property
    def under_identity_switching(self) -> bool:
        """F5, Q23: a project in the enterprise's own province is switched to from the
        enterprise login by its LR, FO and tax officers."""
        return (
            bool(self.enterprise_roles)
            and self.project.tax_authority.province == self.home_province
        )

    def identity(self, entry: Entry) -> Identity:
        return Identity(
            entry,
            role=self.role,
            enterprise_code=self.project.enterprise_code,
            enterprise_name=self.project.enterprise_name,
            subject_type=self.project.subject_type,
            project_number=self.project.project_number,
            tax_authority=self.project.tax_authority,
        )

    def listed_identity(self) -> Identity:
        """How identity switching offers it: from the enterprise login in the home
        province (F5), otherwise as a specific subject in the project's province (D5)."""
        if self.under_identity_switching:
            return self.identity(types_pb2.ENTRY_ENTERPRISE)
        return self.identity(types_pb2.ENTRY_SPECIFIC_SUBJECT)


def _type_matches(project: Project, subject_type_: SubjectType) -> bool:
    return subject_type_ in (types_pb2.SUBJECT_TYPE_UNSPECIFIED, project.subject_type)


def matches_query(project: Project, subject_type_: SubjectType, query: str) -> bool:
    """D5 fuzzy search: a substring of the USCC/TIN or of the project number."""
    return _type_matches(project, subject_type_) and (
        query in project.project_number or query in project.enterprise_code
    )


def subject_identity(accesses: Iterable[ProjectAccess], target: Target) -> Identity:
    """D5: a specific subject, named by its USCC/TIN or project number, in the province
    logged in through; F5: a home-province project switched to from the enterprise login.
    `accesses` are the person's related projects (in the target's province, if given)."""
    for access in accesses:
        project = access.project
        if not _type_matches(project, target.subject_type):
            continue
        if target.entry == types_pb2.ENTRY_SPECIFIC_SUBJECT and target.subject_number in (
            project.project_number,
            project.enterprise_code,
        ):
            return access.identity(types_pb2.ENTRY_SPECIFIC_SUBJECT)
        if (
            target.entry == types_pb2.ENTRY_ENTERPRISE
            and access.under_identity_switching
            and project.project_number == target.subject_number
            and project.enterprise_code == target.enterprise_code
        ):
            return access.identity(types_pb2.ENTRY_ENTERPRISE)
    raise relation_not_found()


@dataclass(frozen=True)
class AgentClient:
    """F4: a client an agent may act for: the agent is listed in the agency's
    basic-information form and in the client's agreement, and the agreement is in force."""

    agency_code: str
    client_code: str
    client: Enterprise | None

    def identity(self) -> Identity:
        return Identity(
            types_pb2.ENTRY_AGENT,
            role=TAX_AGENT,
            agency_code=self.agency_code,
            client_code=self.client_code,
            client_name=self.client.name if self.client else "",
            tax_authority=self.client.tax_authority if self.client else None,
        )


def agent_identity(clients: Iterable[AgentClient], target: Target) -> Identity:
    """F4: the agent entry for the agency (some client in force), or one client."""
    for client in clients:
        if client.agency_code != target.agency_code:
            continue
        if not target.client_code:
            return Identity(types_pb2.ENTRY_AGENT, role=TAX_AGENT, agency_code=target.agency_code)
        if client.client_code == target.client_code:
            return client.identity()
    raise relation_not_found()
