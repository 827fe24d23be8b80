"""A2, F2: enterprises appear when the core tax system confirms a registration, with their
legal representative and financial officer waiting for their own confirmation."""

from __future__ import annotations

import threading

import grpc
from etax.binding.v1 import binding_pb2 as pb
from etax.common.v1 import types_pb2
from etax.common.v1.types_pb2 import Role

from etax_platform.errors import Reason
from tests.binding.support import AUTHORITIES, SHANDONG, Binding, expect, rpc_error
from tests.harness.numbers import uscc

RELATION_NOT_FOUND_TEXT = "未查询到您与该企业的关联关系信息，请确认录入的信息是否正确"
PENDING = pb.RELATION_STATE_PENDING
ACTIVE = pb.RELATION_STATE_ACTIVE
REPLACED = pb.RELATION_STATE_REPLACED


def test_a2_f2_registration_records_enterprise_and_pending_lr_and_fo(binding: Binding) -> None:
    lr, fo = binding.person("张建国"), binding.person("李财务")
    response = binding.register_enterprise("91110000600037341L", lr, fo, name="北京测试有限公司")

    assert response.enterprise.code == "91110000600037341L"
    assert response.enterprise.name == "北京测试有限公司"
    assert response.enterprise.tax_authority == AUTHORITIES[SHANDONG]
    roles = [(r.role, r.state, r.confirming_party) for r in response.relations]
    assert roles == [
        (Role.ROLE_LEGAL_REPRESENTATIVE, PENDING, pb.CONFIRMING_PARTY_PERSON),
        (Role.ROLE_FINANCIAL_OFFICER, PENDING, pb.CONFIRMING_PARTY_PERSON),
    ]
    # Both are registered already, so the relations name them at once.
    assert [r.person_id for r in response.relations] == [lr.person_id, fo.person_id]
    # Waiting for the person: no access yet.
    assert [r.relation_id for r in binding.pending(lr)] == [response.relations[0].relation_id]
    _, error = rpc_error(lambda: binding.check_enterprise(lr, "91110000600037341L"))
    assert error.reason is Reason.RELATION_NOT_FOUND
    assert error.user_text == RELATION_NOT_FOUND_TEXT


def test_f2_legal_representative_confirms_once_and_is_bound(binding: Binding) -> None:
    lr, fo = binding.person("张建国"), binding.person("李财务")
    code = uscc(1)
    relations = binding.register_enterprise(code, lr, fo).relations

    confirmed = binding.confirm(relations[0].relation_id, lr)

    assert confirmed.state == ACTIVE
    identity = binding.check_enterprise(lr, code)
    assert (identity.role, identity.enterprise_code) == (Role.ROLE_LEGAL_REPRESENTATIVE, code)
    assert binding.pending(lr) == []
    # The financial officer still has to confirm their own relation.
    expect(lambda: binding.check_enterprise(fo, code), Reason.RELATION_NOT_FOUND)
    binding.confirm(relations[1].relation_id, fo)
    assert binding.check_enterprise(fo, code).role == Role.ROLE_FINANCIAL_OFFICER


def test_f2_relation_waits_for_a_person_who_registers_later(binding: Binding) -> None:
    lr = binding.person("王未注", registered=False)
    code = uscc(2)
    relation = binding.register_enterprise(code, lr).relations[0]
    assert relation.person_id == ""

    binding.register(lr)
    (waiting,) = binding.pending(lr)
    assert waiting.relation_id == relation.relation_id
    assert waiting.person_id == lr.person_id
    binding.confirm(relation.relation_id, lr)
    assert binding.check_enterprise(lr, code).role == Role.ROLE_LEGAL_REPRESENTATIVE


def test_a2_same_registration_again_changes_nothing(binding: Binding) -> None:
    lr, fo = binding.person("张建国"), binding.person("李财务")
    code = uscc(3)
    first = binding.register_enterprise(code, lr, fo)
    binding.confirm(first.relations[0].relation_id, lr)

    again = binding.register_enterprise(code, lr, fo)

    assert [r.relation_id for r in again.relations] == [r.relation_id for r in first.relations]
    assert [r.state for r in again.relations] == [ACTIVE, PENDING]
    assert len(binding.enterprise_relations(code, lr)) == 2


def test_a2_changed_legal_representative_replaces_the_old_relation(binding: Binding) -> None:
    old_lr, fo, new_lr = binding.person("张旧"), binding.person("李财务"), binding.person("赵新")
    code = uscc(4)
    first = binding.bound_enterprise(code, old_lr, fo)

    second = binding.register_enterprise(code, new_lr, fo)

    assert second.relations[0].relation_id != first.relations[0].relation_id
    assert second.relations[0].state == PENDING
    assert second.relations[1].relation_id == first.relations[1].relation_id
    states = {r.relation_id: r.state for r in binding.enterprise_relations(code, fo)}
    assert states[first.relations[0].relation_id] == REPLACED
    expect(lambda: binding.check_enterprise(old_lr, code), Reason.RELATION_NOT_FOUND)
    binding.confirm(second.relations[0].relation_id, new_lr)
    assert binding.check_enterprise(new_lr, code).role == Role.ROLE_LEGAL_REPRESENTATIVE


def test_a2_changed_financial_officer_replaces_and_a_missing_one_removes(binding: Binding) -> None:
    lr, old_fo, new_fo = binding.person("张建国"), binding.person("李旧"), binding.person("钱新")
    code = uscc(5)
    first = binding.bound_enterprise(code, lr, old_fo)

    second = binding.register_enterprise(code, lr, new_fo)
    assert second.relations[1].relation_id != first.relations[1].relation_id
    expect(lambda: binding.check_enterprise(old_fo, code), Reason.RELATION_NOT_FOUND)

    third = binding.register_enterprise(code, lr)
    assert [r.role for r in third.relations] == [Role.ROLE_LEGAL_REPRESENTATIVE]
    states = {r.relation_id: r.state for r in binding.enterprise_relations(code, lr)}
    assert states[second.relations[1].relation_id] == REPLACED


def test_a2_registration_updates_the_enterprise_name(binding: Binding) -> None:
    lr = binding.person("张建国")
    code = uscc(6)
    binding.bound_enterprise(code, lr)
    binding.register_enterprise(code, lr, name="济南新名称有限公司")
    assert binding.check_enterprise(lr, code).enterprise_name == "济南新名称有限公司"


def test_a2_concurrent_identical_registrations_record_one_enterprise(binding: Binding) -> None:
    lr, fo = binding.person("张建国"), binding.person("李财务")
    code = uscc(7)
    barrier = threading.Barrier(8)
    results: list[pb.ConfirmTaxpayerRegistrationResponse] = []

    def register() -> None:
        barrier.wait()
        results.append(binding.register_enterprise(code, lr, fo))

    threads = [threading.Thread(target=register) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 8
    assert len({tuple(r.relation_id for r in result.relations) for result in results}) == 1
    binding.confirm(results[0].relations[0].relation_id, lr)
    assert len(binding.enterprise_relations(code, lr)) == 2


def test_a2_invalid_uscc_is_refused_and_nothing_recorded(binding: Binding) -> None:
    lr = binding.person("张建国")
    code, error = rpc_error(lambda: binding.register_enterprise("91110000600037341N", lr))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason is Reason.INVALID_ENTERPRISE_CODE
    assert error.metadata["field"] == "enterprise_code"
    assert binding.pending(lr) == []


def test_a2_bad_registration_fields_name_the_field(binding: Binding) -> None:
    lr = binding.person("张建国")
    no_document = types_pb2.NamedDocument(name="张建国")
    cases = [
        (
            pb.ConfirmTaxpayerRegistrationRequest(
                enterprise_code=uscc(8), name="某公司", tax_authority=AUTHORITIES[SHANDONG]
            ),
            Reason.INVALID_DOCUMENT,
            "legal_representative.document.type",
        ),
        (
            pb.ConfirmTaxpayerRegistrationRequest(
                enterprise_code=uscc(8),
                name="某公司",
                tax_authority=AUTHORITIES[SHANDONG],
                legal_representative=lr.named,
                financial_officer=no_document,
            ),
            Reason.INVALID_DOCUMENT,
            "financial_officer.document.type",
        ),
        (
            pb.ConfirmTaxpayerRegistrationRequest(
                enterprise_code=uscc(8),
                name=" ",
                tax_authority=AUTHORITIES[SHANDONG],
                legal_representative=lr.named,
            ),
            Reason.INVALID_ARGUMENT,
            "name",
        ),
        (
            pb.ConfirmTaxpayerRegistrationRequest(
                enterprise_code=uscc(8), name="某公司", legal_representative=lr.named
            ),
            Reason.INVALID_ARGUMENT,
            "tax_authority.code",
        ),
        (
            pb.ConfirmTaxpayerRegistrationRequest(
                enterprise_code=uscc(8),
                name="某公司",
                legal_representative=lr.named,
                tax_authority=types_pb2.TaxAuthority(
                    code="13701020000", name="某局", province="99"
                ),
            ),
            Reason.INVALID_ARGUMENT,
            "tax_authority.province",
        ),
    ]
    for request, reason, field_name in cases:
        expect(
            lambda r=request: binding.internal.ConfirmTaxpayerRegistration(r, timeout=10),
            reason,
            field_name,
        )
    assert binding.pending(lr) == []


def test_a2_enterprise_code_is_normalised_to_upper_case(binding: Binding) -> None:
    lr = binding.person("张建国")
    response = binding.register_enterprise(" 91310115ma1k3btp2b ", lr)
    assert response.enterprise.code == "91310115MA1K3BTP2B"
    binding.confirm(response.relations[0].relation_id, lr)
    assert binding.check_enterprise(lr, "91310115ma1k3btp2b").enterprise_code == (
        "91310115MA1K3BTP2B"
    )
