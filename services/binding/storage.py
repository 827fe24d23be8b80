"""Enterprises, relations, projects and agents in binding's database.

Each public method is one unit of work (or, with a `session`, a step of the caller's).
Races are decided by the database: the unique live-relation index decides concurrent
relations (F1), a row lock on the enterprise queues concurrent registrations (A2), and
conditional UPDATEs decide concurrent state changes.

A person is found by their document's blind indexes, one per key of binding's keyring
(`Indexes`, the active key's first): new rows store the active one and its key id, reads
match any (a rotation needs no downtime; `move_rows` moves a person's rows to the active
key).

The hot reads (login's CheckAccess, ListMyIdentities) are one prebuilt statement each
(`Database.run`: prepared, straight on the driver on PostgreSQL): the person's active
relations, report roles, related projects and agent clients come back as rows of one
UNION, tagged by part, in the order the answer lists them.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

from etax.binding.v1.binding_pb2 import RelationState
from etax.common.v1.types_pb2 import Role, SubjectType
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    CursorResult,
    Integer,
    Row,
    Select,
    String,
    Table,
    and_,
    bindparam,
    delete,
    literal_column,
    not_,
    null,
    or_,
    select,
    union,
    union_all,
    update,
)
from sqlalchemy import cast as cast_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.expression import Executable

from etax_platform.clock import from_millis, to_millis
from etax_platform.db import Database, ListStatement, Statement, dialect_insert
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.pii import PersonalData, mask_document, mask_name
from services.binding import domain
from services.binding.domain import (
    ACTIVE,
    EXPIRED,
    LIVE_STATES,
    PENDING,
    REPLACED,
    Actor,
    AgentClient,
    Enterprise,
    NamedDocument,
    Origin,
    Project,
    ProjectAccess,
    Relation,
    RelationFacts,
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

# A person's indexes, one per key still held: the active key's first (what new rows use).
Indexes = tuple[str, ...]
# Encryption contexts: a ciphertext only decrypts in the column it was written for.
_DOCUMENT_NUMBER = "binding.relations.document_number"
_PERSON_NAME = "binding.relations.person_name"
AnyRow = Row[*tuple[Any, ...]]
_ALREADY_RELATED = "您与该企业已存在该身份的关联关系或待确认的授权"


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


def _constant(value: int) -> ColumnElement[Any]:
    """A number written into a hot statement's text (no parameter, no expanding IN)."""
    return literal_column(str(int(value)))


# --- the hot statements (built once) --------------------------------------------------------

_NOW_MS: BindParameter[int] = bindparam("now_ms")
# Parts of the access rows, in the order an answer lists them.
ROLE, REPORT_ROLE, PROJECT, AGENT_CLIENT = 1, 2, 3, 4
_ACCESS_COLUMNS = {
    "part": Integer,
    "code": String,
    "name": String,
    "tax_authority_code": String,
    "tax_authority_name": String,
    "province": String,
    "role": Integer,
    "subject_type": Integer,
    "enterprise_code": String,
    "enterprise_name": String,
    "home_province": String,
    "client_code": String,
}


def _columns(*values: Any) -> list[Any]:
    """One part's columns, labelled as _ACCESS_COLUMNS (None: a NULL of the column's type,
    which PostgreSQL needs to match the parts of a UNION)."""
    return [
        (cast_(null(), kind) if value is None else value).label(name)
        for value, (name, kind) in zip(values, _ACCESS_COLUMNS.items(), strict=True)
    ]


class _Parts:
    """The access statements' parts for a person's indexes (one, or more while a
    rotation's older keys are held), each index a parameter of its own (`names`)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def of_person(self, column: Any) -> ColumnElement[bool]:
        if len(self.names) == 1:
            return column == bindparam(self.names[0])  # type: ignore[no-any-return]
        return column.in_([bindparam(name) for name in self.names])  # type: ignore[no-any-return]

    def active_now(self) -> ColumnElement[bool]:
        return and_(
            self.of_person(relations.c.document_index),
            relations.c.state == _constant(ACTIVE),
            or_(relations.c.valid_until.is_(None), relations.c.valid_until > _NOW_MS),
        )

    def roles(self) -> Select[Any]:
        return (
            select(
                *_columns(
                    _constant(ROLE),
                    enterprises.c.code,
                    enterprises.c.name,
                    enterprises.c.tax_authority_code,
                    enterprises.c.tax_authority_name,
                    enterprises.c.province,
                    relations.c.role,
                    None,
                    None,
                    None,
                    None,
                    None,
                )
            )
            .select_from(
                relations.join(enterprises, enterprises.c.code == relations.c.enterprise_code)
            )
            .where(self.active_now())
        )

    def report_roles(self) -> Select[Any]:
        return select(
            *_columns(
                _constant(REPORT_ROLE),
                project_people.c.project_number,
                None,
                None,
                None,
                None,
                project_people.c.role,
                None,
                None,
                None,
                None,
                None,
            )
        ).where(self.of_person(project_people.c.document_index))

    def projects(self, in_province: bool) -> Select[Any]:
        """D5: projects of an enterprise the person holds a project role at, or whose
        report names them (in the province, if given). One IN over the UNION of both, not
        an OR of two INs: PostgreSQL answers an OR of subqueries with a scan of every
        project (bench/size-report.md: 24 CheckAccess/s at 1M persons), the UNION with
        index lookups of the few project numbers it finds."""
        role_projects = projects.alias("role_projects")
        through_role = select(role_projects.c.project_number).where(
            role_projects.c.enterprise_code.in_(
                select(relations.c.enterprise_code).where(
                    self.active_now(),
                    relations.c.role.in_([_constant(r) for r in sorted(domain.PROJECT_ROLES)]),
                )
            )
        )
        named = select(project_people.c.project_number).where(
            self.of_person(project_people.c.document_index)
        )
        part = (
            select(
                *_columns(
                    _constant(PROJECT),
                    projects.c.project_number,
                    None,
                    projects.c.tax_authority_code,
                    projects.c.tax_authority_name,
                    projects.c.province,
                    None,
                    projects.c.subject_type,
                    projects.c.enterprise_code,
                    enterprises.c.name,
                    enterprises.c.province,
                    None,
                )
            )
            .select_from(
                projects.join(enterprises, enterprises.c.code == projects.c.enterprise_code)
            )
            .where(projects.c.project_number.in_(union(through_role, named)))
        )
        return part.where(projects.c.province == bindparam("province")) if in_province else part

    def agent_clients(self, of_agency: bool) -> Select[Any]:
        """F4: clients whose agreement names the person and is in force now, of agencies
        whose basic-information form lists the person (code: the agency). Both forms name
        the person, possibly under different keys during a rotation."""
        part = (
            select(
                *_columns(
                    _constant(AGENT_CLIENT),
                    agreements.c.agency_code,
                    enterprises.c.name,
                    enterprises.c.tax_authority_code,
                    enterprises.c.tax_authority_name,
                    enterprises.c.province,
                    None,
                    None,
                    enterprises.c.code,
                    None,
                    None,
                    agreements.c.client_code,
                )
            )
            .select_from(
                agreements.join(
                    agreement_agents,
                    agreement_agents.c.agreement_id == agreements.c.agreement_id,
                )
                .join(
                    agency_agents,
                    and_(
                        agency_agents.c.agency_code == agreements.c.agency_code,
                        self.of_person(agency_agents.c.document_index),
                    ),
                )
                .outerjoin(enterprises, enterprises.c.code == agreements.c.client_code)
            )
            .where(
                self.of_person(agreement_agents.c.document_index),
                agreements.c.valid_from <= _NOW_MS,
                agreements.c.valid_until > _NOW_MS,
            )
            .distinct()
        )
        if of_agency:
            return part.where(agreements.c.agency_code == bindparam("agency_code"))
        return part

    def enterprise(self) -> Select[Any]:
        return (
            select(
                enterprises.c.code,
                enterprises.c.name,
                enterprises.c.tax_authority_code,
                enterprises.c.tax_authority_name,
                enterprises.c.province,
                relations.c.role,
            )
            .select_from(
                enterprises.outerjoin(
                    relations,
                    and_(relations.c.enterprise_code == enterprises.c.code, self.active_now()),
                )
            )
            .where(enterprises.c.code == bindparam("code"))
        )


def _person_statement(build: Callable[[_Parts], Executable]) -> ListStatement:
    """A hot statement about one person, built for each number of indexes a person has."""
    return ListStatement(lambda names: build(_Parts(names)), "index")


def _access_statement(parts: Callable[[_Parts], Sequence[Select[Any]]]) -> ListStatement:
    def build(p: _Parts) -> Executable:
        union = union_all(*parts(p)).subquery("access")
        return select(*(union.c[name] for name in _ACCESS_COLUMNS)).order_by(
            union.c.part, union.c.code, union.c.client_code
        )

    return _person_statement(build)


def _everything(in_province: bool) -> Callable[[_Parts], Sequence[Select[Any]]]:
    def parts(p: _Parts) -> Sequence[Select[Any]]:
        return (p.roles(), p.report_roles(), p.projects(in_province), p.agent_clients(False))

    return parts


def _subjects(in_province: bool) -> Callable[[_Parts], Sequence[Select[Any]]]:
    def parts(p: _Parts) -> Sequence[Select[Any]]:
        return (p.roles(), p.report_roles(), p.projects(in_province))

    return parts


# ListMyIdentities: everything, in one statement (with or without a province).
_IDENTITIES = {
    in_province: _access_statement(_everything(in_province)) for in_province in (False, True)
}
# CheckAccess, one statement per entry: a specific subject (or an enterprise's project),
# an agency's clients, an enterprise with the person's roles at it.
_SUBJECT_ACCESS = {
    in_province: _access_statement(_subjects(in_province)) for in_province in (False, True)
}
_AGENT_ACCESS = _access_statement(lambda p: (p.agent_clients(True),))
_ENTERPRISE_ACCESS = _person_statement(_Parts.enterprise)
_DOCUMENT_INDEX_OF = Statement(
    select(person_documents.c.document_index, person_documents.c.index_key_id).where(
        person_documents.c.person_id == bindparam("person_id")
    )
)

# Statements of the other use cases (built once as well).
_ACTIVE_ROLES_IN = select(relations.c.role).where(
    relations.c.document_index.in_(bindparam("indexes", expanding=True)),
    _in_state(ACTIVE, bindparam("now_ms")),
    relations.c.enterprise_code == bindparam("enterprise_code"),
)
_ENTERPRISE = select(enterprises).where(enterprises.c.code == bindparam("code"))


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


def _tax_authority(row: Any) -> TaxAuthority:
    """The authority columns enterprises, projects and access rows share."""
    return TaxAuthority(row.tax_authority_code, row.tax_authority_name, row.province)


def _enterprise(row: Any) -> Enterprise:
    return Enterprise(row.code, row.name, _tax_authority(row))


class AccessRow(NamedTuple):
    """One row of the access statements (columns as _ACCESS_COLUMNS); a named tuple, as
    the row is one (a frozen dataclass of these twelve fields costs 1.2 µs to make, this
    0.2, on every row of every access check and identity list)."""

    part: int
    code: str
    name: str | None
    tax_authority_code: str | None
    tax_authority_name: str | None
    province: str | None
    role: int | None
    subject_type: int | None
    enterprise_code: str | None
    enterprise_name: str | None
    home_province: str | None
    client_code: str | None


@dataclass(frozen=True)
class Access:
    """What one person may act as, read in one statement (D5, F3, F4, F5)."""

    # Active roles per enterprise, with the enterprises in code order.
    roles: dict[str, frozenset[Role]]
    enterprises: list[Enterprise]
    projects: list[ProjectAccess]
    agent_clients: list[AgentClient]


def _access(rows: Iterable[tuple[Any, ...]]) -> Access:
    roles: defaultdict[str, set[Role]] = defaultdict(set)
    enterprises_: dict[str, Enterprise] = {}
    report_roles: defaultdict[str, set[Role]] = defaultdict(set)
    found_projects: list[AccessRow] = []
    clients: list[AgentClient] = []
    for raw in rows:
        row = AccessRow._make(raw)
        if row.part == ROLE:
            roles[row.code].add(cast(Role, row.role))
            enterprises_.setdefault(row.code, _enterprise(row))
        elif row.part == REPORT_ROLE:
            report_roles[row.code].add(cast(Role, row.role))
        elif row.part == PROJECT:
            found_projects.append(row)
        else:
            # An agreement may name a client binding has no registration of yet.
            client = None
            if row.enterprise_code is not None:
                client = Enterprise(row.enterprise_code, row.name or "", _tax_authority(row))
            clients.append(AgentClient(row.code, row.client_code or "", client))
    held = {code: frozenset(found) for code, found in roles.items()}
    accesses = [
        ProjectAccess(
            Project(
                row.code,
                cast(SubjectType, row.subject_type),
                row.enterprise_code or "",
                row.enterprise_name or "",
                _tax_authority(row),
            ),
            row.home_province or "",
            held.get(row.enterprise_code or "", frozenset()) & domain.PROJECT_ROLES,
            frozenset(report_roles.get(row.code, ())),
        )
        for row in found_projects
    ]
    return Access(held, list(enterprises_.values()), accesses, clients)


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


class BindingStore:
    """`key_id`: the id of the blind-index key new rows are written under (the active
    one), stored beside each index."""

    def __init__(self, database: Database, personal_data: PersonalData, key_id: str) -> None:
        self._db = database
        self._pd = personal_data
        self._key_id = key_id

    # --- persons (person_documents) -----------------------------------------------------

    def document_index_of(self, person_id: str) -> tuple[str, str] | None:
        """The person's stored index and the id of its key."""
        rows = self._db.run(_DOCUMENT_INDEX_OF, {"person_id": person_id})
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    def remember_person(
        self, person_id: str, index: str, older: Sequence[str], now_ms: int
    ) -> None:
        """Keeps person_id <-> the document's active index. During a rotation (`older`:
        its indexes under the other keys held) the person's rows move to the active key."""
        if older:
            try:
                with self._db.transaction() as session:
                    move_rows(session, older, index, self._key_id)
            except IntegrityError:
                # Another replica moved them at the same moment: they are found either way.
                log.info("a person's rows were being moved by another process")
        with self._db.transaction() as session:
            # A row of an older key is moved to the active one.
            session.execute(
                update(person_documents)
                .where(
                    person_documents.c.person_id == person_id,
                    person_documents.c.index_key_id != self._key_id,
                )
                .values(document_index=index, index_key_id=self._key_id)
            )
            insert_ignoring_conflicts(
                session,
                person_documents,
                {
                    "person_id": person_id,
                    "document_index": index,
                    "index_key_id": self._key_id,
                    "created_at": now_ms,
                },
            )

    # --- access (D5, F3, F4, F5): one statement each --------------------------------------

    def identities(self, indexes: Indexes, now_ms: int, province: str) -> Access:
        return _access(
            _IDENTITIES[bool(province)].run(
                self._db, indexes, {"now_ms": now_ms, "province": province}
            )
        )

    def subject_access(self, indexes: Indexes, now_ms: int, province: str) -> list[ProjectAccess]:
        rows = _SUBJECT_ACCESS[bool(province)].run(
            self._db, indexes, {"now_ms": now_ms, "province": province}
        )
        return _access(rows).projects

    def agent_clients(self, indexes: Indexes, now_ms: int, agency_code: str) -> list[AgentClient]:
        rows = _AGENT_ACCESS.run(self._db, indexes, {"now_ms": now_ms, "agency_code": agency_code})
        return _access(rows).agent_clients

    def enterprise_access(
        self, indexes: Indexes, now_ms: int, code: str
    ) -> tuple[Enterprise, frozenset[Role]] | None:
        """The enterprise and the person's active roles at it; None: no such enterprise."""
        rows = _ENTERPRISE_ACCESS.run(self._db, indexes, {"now_ms": now_ms, "code": code})
        if not rows:
            return None
        first = rows[0]
        enterprise = Enterprise(first[0], first[1], TaxAuthority(first[2], first[3], first[4]))
        return enterprise, frozenset(cast(Role, row[5]) for row in rows if row[5] is not None)

    # --- enterprises and their people (A2, F2) ------------------------------------------

    def record_registration(
        self,
        enterprise: Enterprise,
        people: Sequence[tuple[Role, NamedDocument | None, Indexes]],
        now: datetime,
    ) -> list[Relation]:
        """Creates or updates the enterprise and its registration's people: (role, person,
        the document's indexes) for the legal representative and the financial officer, in
        that order. The same person again changes nothing; another replaces the relation."""
        now_ms = to_millis(now)
        authority = enterprise.tax_authority
        columns = {
            "name": enterprise.name,
            "tax_authority_code": authority.code,
            "tax_authority_name": authority.name,
            "province": authority.province,
        }
        relation_columns = ("legal_representative_relation_id", "financial_officer_relation_id")
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
            for (role, person, indexes), column in zip(people, relation_columns, strict=True):
                current = row._mapping[column]
                recorded = self._record_registered_person(
                    session,
                    enterprise_code=enterprise.code,
                    role=role,
                    person=person,
                    indexes=indexes,
                    current_id=current,
                    now_ms=now_ms,
                )
                if recorded != current:
                    changes[column] = recorded
            if changes:
                session.execute(
                    update(enterprises)
                    .where(enterprises.c.code == enterprise.code)
                    .values(**changes, updated_at=now_ms)
                )
            recorded_ids = [changes.get(c, row._mapping[c]) for c in relation_columns]
            return [
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
        indexes: Indexes,
        current_id: str | None,
        now_ms: int,
    ) -> str | None:
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

    def new_relation(
        self,
        *,
        enterprise_code: str,
        role: Role,
        origin: Origin,
        person: NamedDocument,
        indexes: Indexes,
        valid_until: datetime | None,
        created_by: str,
        now: datetime,
        manager: Indexes | None = None,
    ) -> Relation:
        """A new pending relation asked for by a person (F1); STATE_CONFLICT, naming the
        existing one, when the person already has a live relation in that role. With
        `manager` (their indexes), that person must be the enterprise's LR or FO (F1(b))."""
        with self._db.transaction() as session:
            self.require_enterprise(session, enterprise_code)
            if (
                manager is not None
                and not self._actor(session, manager, enterprise_code, to_millis(now)).is_manager
            ):
                raise DomainError(Reason.NOT_AUTHORIZED_TO_CONFIRM)
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
                    Reason.STATE_CONFLICT,
                    _ALREADY_RELATED,
                    metadata={"relation_id": existing or ""},
                )
            return self._relation(session, relation_id, now)

    def change_relation(
        self,
        *,
        relation_id: str,
        actor: Indexes,
        ensure_allowed: Callable[[RelationFacts, Actor], None],
        from_state: RelationState,
        to_state: RelationState,
        changed_by: str,
        now: datetime,
    ) -> Relation:
        """One state change by an entitled actor. The conditional UPDATE decides between
        concurrent changes: exactly one finds the relation still in `from_state`."""
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
            ensure_allowed(facts, self._actor(session, actor, row.enterprise_code, now_ms))
            changed = session.execute(
                update(relations)
                .where(relations.c.relation_id == relation_id, _in_state(from_state, now_ms))
                .values(state=to_state, changed_by=changed_by, updated_at=now_ms)
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
            return self._relation(session, relation_id, now)

    def pending_confirmations(self, indexes: Indexes, now: datetime) -> list[Relation]:
        """Relations waiting for this person's own confirmation (F1(b), F2)."""
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
        self,
        actor: Indexes,
        enterprise_code: str,
        states: Collection[RelationState],
        now: datetime,
    ) -> list[Relation]:
        """The enterprise's people and applications, for its LR and FO only (F1)."""
        now_ms = to_millis(now)
        with self._db.reading() as session:
            self.require_enterprise(session, enterprise_code)
            if not self._actor(session, actor, enterprise_code, now_ms).is_manager:
                raise DomainError(Reason.NOT_AUTHORIZED_TO_CONFIRM)
            query = _relations_query().where(relations.c.enterprise_code == enterprise_code)
            if states:
                query = query.where(or_(*(_in_state(state, now_ms) for state in states)))
            rows = session.execute(
                query.order_by(relations.c.created_at, relations.c.relation_id)
            ).all()
            return [self._relation_of(row, now) for row in rows]

    # --- cross-region projects (D5, F5) -------------------------------------------------

    def record_project(
        self, project: Project, people: Iterable[tuple[Role, str]], now_ms: int
    ) -> Enterprise:
        """Records a project and the (role, document index) of its report's handlers and
        contacts; a new report for the same project replaces them. Returns its enterprise."""
        authority = project.tax_authority
        columns = {
            "subject_type": project.subject_type,
            "tax_authority_code": authority.code,
            "tax_authority_name": authority.name,
            "province": authority.province,
            "updated_at": now_ms,
        }
        with self._db.transaction() as session:
            enterprise = self.require_enterprise(session, project.enterprise_code)
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
            listed = sorted(set(people))
            if listed:
                session.execute(
                    project_people.insert(),
                    [
                        {
                            "project_number": project.project_number,
                            "role": r,
                            "document_index": i,
                            "index_key_id": self._key_id,
                        }
                        for r, i in listed
                    ],
                )
        return enterprise

    # --- tax agents (F4) ----------------------------------------------------------------

    def record_agency_information(
        self, agency_code: str, name: str, indexes: Sequence[str], now_ms: int
    ) -> None:
        """The agency's basic-information form; a new one replaces the list of agents."""
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
                            "index_key_id": self._key_id,
                        }
                        for i in indexes
                    ],
                )

    def record_agreement(
        self,
        agency_code: str,
        client_code: str,
        indexes: Sequence[str],
        period: tuple[datetime, datetime],
        now_ms: int,
    ) -> str:
        """The agreement form for one client; a new one for the same client replaces the
        agents and the validity period. Returns the agreement's id."""
        start, end = period
        validity = {"valid_from": to_millis(start), "valid_until": to_millis(end)}
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
                    **validity,
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
                    .values(**validity, updated_at=now_ms)
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
                        "index_key_id": self._key_id,
                    }
                    for i in indexes
                ],
            )
        return agreement_id

    # --- helpers ------------------------------------------------------------------------

    def require_enterprise(self, session: Connection, code: str) -> Enterprise:
        row = session.execute(_ENTERPRISE, {"code": code}).one_or_none()
        if row is None:
            raise invalid("enterprise_code", Reason.NOT_FOUND)
        return _enterprise(row)

    def _actor(
        self, session: Connection, indexes: Indexes, enterprise_code: str, now_ms: int
    ) -> Actor:
        held = {
            cast(Role, role)
            for role in session.scalars(
                _ACTIVE_ROLES_IN,
                {"indexes": list(indexes), "now_ms": now_ms, "enterprise_code": enterprise_code},
            )
        }
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
                "index_key_id": self._key_id,
                "document_type": person.document.type,
                "document_number_encrypted": self._pd.encrypt(
                    person.document.number, _DOCUMENT_NUMBER
                ),
                "person_name_encrypted": self._pd.encrypt(person.name, _PERSON_NAME),
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

    def _relation(self, session: Connection, relation_id: str, now: datetime) -> Relation:
        row = session.execute(
            _relations_query().where(relations.c.relation_id == relation_id)
        ).one()
        return self._relation_of(row, now)

    def _relation_of(self, row: AnyRow, now: datetime) -> Relation:
        number = self._pd.decrypt(row.document_number_encrypted, _DOCUMENT_NUMBER)
        name = self._pd.decrypt(row.person_name_encrypted, _PERSON_NAME)
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
