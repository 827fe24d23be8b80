"""gRPC servicers of etax.binding.v1: protobuf <-> domain values, and nothing else.

Public RPCs act for the person in the verified access token; internal RPCs (core tax
system, hall, auth) name the person or enterprise in the request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
from etax.binding.v1 import binding_pb2 as pb
from etax.binding.v1 import binding_pb2_grpc
from etax.common.v1 import types_pb2

from etax_platform.clock import optional_instant
from etax_platform.errors import invalid
from etax_platform.identifiers import normalize_subject_number
from etax_platform.policy import caller
from etax_platform.tokens import AccessClaims
from services.binding import domain
from services.binding.service import BindingService


def _named_documents(
    people: Sequence[types_pb2.NamedDocument], field_name: str
) -> list[domain.NamedDocument]:
    return [
        domain.named_document(p.document.type, p.document.number, p.name, f"{field_name}[{i}]")
        for i, p in enumerate(people)
    ]


def _named_document(person: types_pb2.NamedDocument, field_name: str) -> domain.NamedDocument:
    return domain.named_document(
        person.document.type, person.document.number, person.name, field_name
    )


def _tax_authority(authority: types_pb2.TaxAuthority, field_name: str) -> domain.TaxAuthority:
    return domain.tax_authority(authority.code, authority.name, authority.province, field_name)


def _authority_pb(authority: domain.TaxAuthority | None) -> types_pb2.TaxAuthority | None:
    if authority is None:
        return None
    return types_pb2.TaxAuthority(
        code=authority.code, name=authority.name, province=authority.province
    )


def _relation_pb(relation: domain.Relation) -> pb.Relation:
    return pb.Relation(
        relation_id=relation.relation_id,
        enterprise_code=relation.enterprise_code,
        enterprise_name=relation.enterprise_name,
        role=relation.role,
        state=relation.state,
        confirming_party=relation.confirming_party,
        masked_person_name=relation.masked_person_name,
        masked_document_number=relation.masked_document_number,
        person_id=relation.person_id,
        valid_until=relation.valid_until,
        created_at=relation.created_at,
    )


def _identity_pb(identity: domain.Identity) -> pb.Identity:
    return pb.Identity(
        entry=identity.entry,
        enterprise_code=identity.enterprise_code,
        enterprise_name=identity.enterprise_name,
        role=identity.role,
        subject_type=identity.subject_type,
        project_number=identity.project_number,
        agency_code=identity.agency_code,
        client_code=identity.client_code,
        client_name=identity.client_name,
        tax_authority=_authority_pb(identity.tax_authority),
    )


def _project_pb(project: domain.Project) -> pb.CrossRegionProject:
    return pb.CrossRegionProject(
        project_number=project.project_number,
        subject_type=project.subject_type,
        enterprise_code=project.enterprise_code,
        enterprise_name=project.enterprise_name,
        tax_authority=_authority_pb(project.tax_authority),
    )


def _province_or_session(raw: str, claims: AccessClaims) -> str:
    """The requested province, else the one the session came through (A3)."""
    if raw.strip():
        return domain.province(raw, "province")
    return claims.province


class BindingServicer(binding_pb2_grpc.BindingServiceServicer):  # type: ignore[misc]
    def __init__(self, service: BindingService) -> None:
        self._service = service

    @staticmethod
    def _person_id(context: grpc.ServicerContext) -> str:
        return caller().person_id

    def ApplyForAuthorization(
        self, request: pb.ApplyForAuthorizationRequest, context: grpc.ServicerContext
    ) -> pb.ApplyForAuthorizationResponse:
        person_id = self._person_id(context)
        relation = self._service.apply_for_authorization(
            person_id,
            domain.enterprise_code(request.enterprise_code, "enterprise_code"),
            domain.grantable_role(request.role, "role"),
        )
        return pb.ApplyForAuthorizationResponse(relation=_relation_pb(relation))

    def AddPerson(
        self, request: pb.AddPersonRequest, context: grpc.ServicerContext
    ) -> pb.AddPersonResponse:
        person_id = self._person_id(context)
        relation = self._service.add_person(
            person_id,
            domain.enterprise_code(request.enterprise_code, "enterprise_code"),
            _named_document(request.person, "person"),
            domain.grantable_role(request.role, "role"),
            optional_instant(request, "valid_until"),
        )
        return pb.AddPersonResponse(relation=_relation_pb(relation))

    def _change(
        self,
        relation_id: str,
        context: grpc.ServicerContext,
        change: Callable[[str, str], domain.Relation],
    ) -> pb.Relation:
        person_id = self._person_id(context)
        return _relation_pb(change(person_id, domain.opaque_id(relation_id, "relation_id")))

    def ConfirmRelation(
        self, request: pb.ConfirmRelationRequest, context: grpc.ServicerContext
    ) -> pb.ConfirmRelationResponse:
        relation = self._change(request.relation_id, context, self._service.confirm_relation)
        return pb.ConfirmRelationResponse(relation=relation)

    def RejectRelation(
        self, request: pb.RejectRelationRequest, context: grpc.ServicerContext
    ) -> pb.RejectRelationResponse:
        relation = self._change(request.relation_id, context, self._service.reject_relation)
        return pb.RejectRelationResponse(relation=relation)

    def WithdrawRelation(
        self, request: pb.WithdrawRelationRequest, context: grpc.ServicerContext
    ) -> pb.WithdrawRelationResponse:
        relation = self._change(request.relation_id, context, self._service.withdraw_relation)
        return pb.WithdrawRelationResponse(relation=relation)

    def EndRelation(
        self, request: pb.EndRelationRequest, context: grpc.ServicerContext
    ) -> pb.EndRelationResponse:
        relation = self._change(request.relation_id, context, self._service.end_relation)
        return pb.EndRelationResponse(relation=relation)

    def ListMyPendingConfirmations(
        self, request: pb.ListMyPendingConfirmationsRequest, context: grpc.ServicerContext
    ) -> pb.ListMyPendingConfirmationsResponse:
        relations = self._service.pending_confirmations(self._person_id(context))
        return pb.ListMyPendingConfirmationsResponse(relations=map(_relation_pb, relations))

    def ListEnterpriseRelations(
        self, request: pb.ListEnterpriseRelationsRequest, context: grpc.ServicerContext
    ) -> pb.ListEnterpriseRelationsResponse:
        person_id = self._person_id(context)
        relations = self._service.enterprise_relations(
            person_id,
            domain.enterprise_code(request.enterprise_code, "enterprise_code"),
            domain.relation_states(request.states, "states"),
        )
        return pb.ListEnterpriseRelationsResponse(relations=map(_relation_pb, relations))

    def ListMyIdentities(
        self, request: pb.ListMyIdentitiesRequest, context: grpc.ServicerContext
    ) -> pb.ListMyIdentitiesResponse:
        claims = caller()
        identities = self._service.identities(
            claims.person_id, _province_or_session(request.province, claims)
        )
        return pb.ListMyIdentitiesResponse(identities=map(_identity_pb, identities))

    def SearchSubjects(
        self, request: pb.SearchSubjectsRequest, context: grpc.ServicerContext
    ) -> pb.SearchSubjectsResponse:
        claims = caller()
        subjects = self._service.search_subjects(
            claims.person_id,
            domain.subject_type(request.subject_type, "subject_type", required=False),
            domain.search_query(request.query, "query"),
            _province_or_session(request.province, claims),
        )
        return pb.SearchSubjectsResponse(subjects=map(_project_pb, subjects))

    def ListRelatedProjects(
        self, request: pb.ListRelatedProjectsRequest, context: grpc.ServicerContext
    ) -> pb.ListRelatedProjectsResponse:
        claims = caller()
        projects = self._service.related_projects(
            claims.person_id, _province_or_session(request.province, claims)
        )
        return pb.ListRelatedProjectsResponse(projects=map(_project_pb, projects))


class InternalBindingServicer(binding_pb2_grpc.InternalBindingServiceServicer):  # type: ignore[misc]
    def __init__(self, service: BindingService) -> None:
        self._service = service

    def ConfirmTaxpayerRegistration(
        self, request: pb.ConfirmTaxpayerRegistrationRequest, context: grpc.ServicerContext
    ) -> pb.ConfirmTaxpayerRegistrationResponse:
        enterprise = domain.Enterprise(
            domain.enterprise_code(request.enterprise_code, "enterprise_code"),
            domain.organisation_name(request.name, "name"),
            _tax_authority(request.tax_authority, "tax_authority"),
        )
        financial_officer = (
            _named_document(request.financial_officer, "financial_officer")
            if request.HasField("financial_officer")
            else None
        )
        enterprise, relations = self._service.confirm_taxpayer_registration(
            enterprise,
            _named_document(request.legal_representative, "legal_representative"),
            financial_officer,
        )
        return pb.ConfirmTaxpayerRegistrationResponse(
            enterprise=pb.Enterprise(
                code=enterprise.code,
                name=enterprise.name,
                tax_authority=_authority_pb(enterprise.tax_authority),
            ),
            relations=map(_relation_pb, relations),
        )

    def RecordCrossRegionProject(
        self, request: pb.RecordCrossRegionProjectRequest, context: grpc.ServicerContext
    ) -> pb.RecordCrossRegionProjectResponse:
        project = domain.Project(
            project_number=normalize_subject_number(request.project_number, "project_number"),
            subject_type=domain.subject_type(request.subject_type, "subject_type", required=True),
            enterprise_code=domain.enterprise_code(request.enterprise_code, "enterprise_code"),
            enterprise_name="",
            tax_authority=_tax_authority(request.tax_authority, "tax_authority"),
        )
        recorded = self._service.record_cross_region_project(
            project,
            _named_documents(request.handlers, "handlers"),
            _named_documents(request.contacts, "contacts"),
        )
        return pb.RecordCrossRegionProjectResponse(project=_project_pb(recorded))

    def SubmitAgencyInformation(
        self, request: pb.SubmitAgencyInformationRequest, context: grpc.ServicerContext
    ) -> pb.SubmitAgencyInformationResponse:
        count = self._service.submit_agency_information(
            domain.enterprise_code(request.agency_code, "agency_code"),
            domain.organisation_name(request.name, "name"),
            _named_documents(request.agents, "agents"),
        )
        return pb.SubmitAgencyInformationResponse(agent_count=count)

    def SubmitAgencyAgreement(
        self, request: pb.SubmitAgencyAgreementRequest, context: grpc.ServicerContext
    ) -> pb.SubmitAgencyAgreementResponse:
        if not request.agents:
            raise invalid("agents")
        valid_until = optional_instant(request, "valid_until")
        if valid_until is None:
            raise invalid("valid_until")
        agreement_id = self._service.submit_agency_agreement(
            domain.enterprise_code(request.agency_code, "agency_code"),
            domain.enterprise_code(request.client_code, "client_code"),
            [
                domain.document(agent.type, agent.number, f"agents[{i}]")
                for i, agent in enumerate(request.agents)
            ],
            optional_instant(request, "valid_from"),
            valid_until,
        )
        return pb.SubmitAgencyAgreementResponse(agreement_id=agreement_id)

    def CheckAccess(
        self, request: pb.CheckAccessRequest, context: grpc.ServicerContext
    ) -> pb.CheckAccessResponse:
        target = request.target
        identity = self._service.check_access(
            domain.opaque_id(request.person_id, "person_id"),
            domain.target(
                entry=target.entry,
                enterprise_code_=target.enterprise_code,
                agency_code=target.agency_code,
                client_code=target.client_code,
                subject_type_=target.subject_type,
                subject_number=target.subject_number,
                province_=target.province,
            ),
        )
        return pb.CheckAccessResponse(identity=_identity_pb(identity))

    def SearchPersonSubjects(
        self, request: pb.SearchPersonSubjectsRequest, context: grpc.ServicerContext
    ) -> pb.SearchPersonSubjectsResponse:
        subjects = self._service.search_subjects(
            domain.opaque_id(request.person_id, "person_id"),
            domain.subject_type(request.subject_type, "subject_type", required=False),
            domain.search_query(request.query, "query"),
            domain.province(request.province, "province"),
        )
        return pb.SearchPersonSubjectsResponse(subjects=map(_project_pb, subjects))

    def ListIdentities(
        self, request: pb.ListIdentitiesRequest, context: grpc.ServicerContext
    ) -> pb.ListIdentitiesResponse:
        province = domain.province(request.province, "province") if request.province else ""
        identities = self._service.identities(
            domain.opaque_id(request.person_id, "person_id"), province
        )
        return pb.ListIdentitiesResponse(identities=map(_identity_pb, identities))
