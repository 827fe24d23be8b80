"""The binding service on a real gRPC server, persons with tokens, and short helpers."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
import pytest
from etax.binding.v1 import binding_pb2 as pb
from etax.binding.v1 import binding_pb2_grpc
from etax.common.v1 import types_pb2
from etax.common.v1.types_pb2 import Entry, Role, SubjectType

from etax_platform.clock import ManualClock
from etax_platform.errors import DomainError, Reason, from_rpc_error
from etax_platform.server import GrpcHost
from etax_platform.tokens import AccessClaims, TokenIssuer
from tests.binding.fake_auth import FakeAuth
from tests.harness.numbers import resident_id

RESIDENT_ID = types_pb2.DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD
SHANDONG, BEIJING = "37", "11"
AUTHORITIES = {
    SHANDONG: types_pb2.TaxAuthority(
        code="13701020000", name="国家税务总局济南市历下区税务局", province=SHANDONG
    ),
    BEIJING: types_pb2.TaxAuthority(
        code="11101050000", name="国家税务总局北京市朝阳区税务局", province=BEIJING
    ),
}
INSPECTION = SubjectType.SUBJECT_TYPE_CROSS_REGION_INSPECTION
TAX_SOURCE = SubjectType.SUBJECT_TYPE_CROSS_REGION_TAX_SOURCE
_sequence = itertools.count(1)


@dataclass
class Person:
    name: str
    document: types_pb2.Document
    person_id: str = ""

    @property
    def named(self) -> types_pb2.NamedDocument:
        return types_pb2.NamedDocument(document=self.document, name=self.name)


@dataclass
class Binding:
    host: GrpcHost
    public: binding_pb2_grpc.BindingServiceStub
    internal: binding_pb2_grpc.InternalBindingServiceStub
    auth: FakeAuth
    issuer: TokenIssuer
    clock: ManualClock

    # --- persons ---------------------------------------------------------------------

    def person(self, name: str, *, registered: bool = True) -> Person:
        serial = next(_sequence)
        person = Person(name, types_pb2.Document(type=RESIDENT_ID, number=resident_id(serial)))
        if registered:
            self.register(person)
        return person

    def register(self, person: Person) -> Person:
        person.person_id = self.auth.register(person.document, person.name)
        return person

    def token(self, person: Person, province: str = SHANDONG) -> tuple[tuple[str, str]]:
        token, _ = self.issuer.issue(
            AccessClaims(
                person_id=person.person_id,
                session_id="session",
                entry=Entry.ENTRY_NATURAL_PERSON,
                province=province,
                real_name_level=4,
            )
        )
        return (("authorization", f"Bearer {token}"),)

    # --- enterprises -----------------------------------------------------------------

    def register_enterprise(
        self,
        code: str,
        legal_representative: Person,
        financial_officer: Person | None = None,
        province: str = SHANDONG,
        name: str = "济南测试有限公司",
    ) -> pb.ConfirmTaxpayerRegistrationResponse:
        request = pb.ConfirmTaxpayerRegistrationRequest(
            enterprise_code=code,
            name=name,
            tax_authority=AUTHORITIES[province],
            legal_representative=legal_representative.named,
        )
        if financial_officer is not None:
            request.financial_officer.CopyFrom(financial_officer.named)
        response: pb.ConfirmTaxpayerRegistrationResponse = (
            self.internal.ConfirmTaxpayerRegistration(request, timeout=10)
        )
        return response

    def bound_enterprise(
        self,
        code: str,
        legal_representative: Person,
        financial_officer: Person | None = None,
        province: str = SHANDONG,
    ) -> pb.ConfirmTaxpayerRegistrationResponse:
        """Registered (A2), and the LR and FO confirmed (F2)."""
        response = self.register_enterprise(code, legal_representative, financial_officer, province)
        people = [legal_representative] + ([financial_officer] if financial_officer else [])
        for relation, person in zip(response.relations, people, strict=True):
            self.confirm(relation.relation_id, person)
        return response

    def tax_officer(self, code: str, manager: Person, person: Person) -> pb.Relation:
        """F1(b): added by the LR or FO and confirmed by the person."""
        added = self.add(code, manager, person)
        return self.confirm(added.relation_id, person)

    # --- relations -------------------------------------------------------------------

    def apply(self, code: str, person: Person, role: int = Role.ROLE_TAX_OFFICER) -> pb.Relation:
        response = self.public.ApplyForAuthorization(
            pb.ApplyForAuthorizationRequest(enterprise_code=code, role=role),
            metadata=self.token(person),
            timeout=10,
        )
        relation: pb.Relation = response.relation
        return relation

    def add(
        self,
        code: str,
        manager: Person,
        person: Person,
        role: int = Role.ROLE_TAX_OFFICER,
        valid_until: datetime | None = None,
    ) -> pb.Relation:
        response = self.public.AddPerson(
            pb.AddPersonRequest(
                enterprise_code=code, person=person.named, role=role, valid_until=valid_until
            ),
            metadata=self.token(manager),
            timeout=10,
        )
        relation: pb.Relation = response.relation
        return relation

    def confirm(self, relation_id: str, person: Person) -> pb.Relation:
        return self._act(
            self.public.ConfirmRelation, pb.ConfirmRelationRequest, relation_id, person
        )

    def reject(self, relation_id: str, person: Person) -> pb.Relation:
        return self._act(self.public.RejectRelation, pb.RejectRelationRequest, relation_id, person)

    def withdraw(self, relation_id: str, person: Person) -> pb.Relation:
        return self._act(
            self.public.WithdrawRelation, pb.WithdrawRelationRequest, relation_id, person
        )

    def end(self, relation_id: str, person: Person) -> pb.Relation:
        return self._act(self.public.EndRelation, pb.EndRelationRequest, relation_id, person)

    def _act(
        self,
        method: Callable[..., Any],
        request: Callable[..., Any],
        relation_id: str,
        person: Person,
    ) -> pb.Relation:
        response = method(request(relation_id=relation_id), metadata=self.token(person), timeout=10)
        relation: pb.Relation = response.relation
        return relation

    def pending(self, person: Person) -> list[pb.Relation]:
        response = self.public.ListMyPendingConfirmations(
            pb.ListMyPendingConfirmationsRequest(), metadata=self.token(person), timeout=10
        )
        return list(response.relations)

    def enterprise_relations(self, code: str, manager: Person, *states: int) -> list[pb.Relation]:
        response = self.public.ListEnterpriseRelations(
            pb.ListEnterpriseRelationsRequest(enterprise_code=code, states=states),
            metadata=self.token(manager),
            timeout=10,
        )
        return list(response.relations)

    # --- cross-region projects and agents --------------------------------------------

    def record_project(
        self,
        code: str,
        number: str,
        province: str,
        subject_type: int = INSPECTION,
        handlers: tuple[Person, ...] = (),
        contacts: tuple[Person, ...] = (),
    ) -> pb.CrossRegionProject:
        response = self.internal.RecordCrossRegionProject(
            pb.RecordCrossRegionProjectRequest(
                enterprise_code=code,
                subject_type=subject_type,
                project_number=number,
                tax_authority=AUTHORITIES[province],
                handlers=[p.named for p in handlers],
                contacts=[p.named for p in contacts],
            ),
            timeout=10,
        )
        project: pb.CrossRegionProject = response.project
        return project

    def agency_information(self, agency_code: str, *agents: Person) -> int:
        response = self.internal.SubmitAgencyInformation(
            pb.SubmitAgencyInformationRequest(
                agency_code=agency_code,
                name="山东测试税务师事务所",
                agents=[a.named for a in agents],
            ),
            timeout=10,
        )
        count: int = response.agent_count
        return count

    def agreement(
        self,
        agency_code: str,
        client_code: str,
        agents: tuple[Person, ...],
        valid_from: datetime | None,
        valid_until: datetime | None,
    ) -> str:
        response = self.internal.SubmitAgencyAgreement(
            pb.SubmitAgencyAgreementRequest(
                agency_code=agency_code,
                client_code=client_code,
                agents=[a.document for a in agents],
                valid_from=valid_from,
                valid_until=valid_until,
            ),
            timeout=10,
        )
        agreement_id: str = response.agreement_id
        return agreement_id

    # --- access ----------------------------------------------------------------------

    def check(self, person: Person, **target: Any) -> pb.Identity:
        response = self.internal.CheckAccess(
            pb.CheckAccessRequest(person_id=person.person_id, target=pb.Target(**target)),
            timeout=10,
        )
        identity: pb.Identity = response.identity
        return identity

    def check_enterprise(self, person: Person, code: str) -> pb.Identity:
        return self.check(person, entry=Entry.ENTRY_ENTERPRISE, enterprise_code=code)

    def identities(self, person: Person, province: str = "") -> list[pb.Identity]:
        """What the person may switch to beyond the natural person, which ListMyIdentities
        always lists first (F3, issue 12: every identity the person can switch to)."""
        response = self.public.ListMyIdentities(
            pb.ListMyIdentitiesRequest(province=province), metadata=self.token(person), timeout=10
        )
        natural, *rest = response.identities
        assert natural == pb.Identity(entry=Entry.ENTRY_NATURAL_PERSON)
        return rest


def rpc_error(call: Callable[[], object]) -> tuple[grpc.StatusCode, DomainError]:
    """The status code and domain error of a call that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = from_rpc_error(caught.value)
    assert error is not None, caught.value
    return caught.value.code(), error


def expect(
    call: Callable[[], object], reason: Reason, field_name: str | None = None
) -> DomainError:
    """Asserts the call fails with the reason (and the field, for bad input)."""
    _, error = rpc_error(call)
    assert error.reason is reason, error
    if field_name is not None:
        assert error.metadata.get("field") == field_name, error.metadata
    return error
