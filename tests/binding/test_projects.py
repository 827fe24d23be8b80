"""D5, F5: cross-region projects, who may act as them, where, and how they are found."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from etax.binding.v1 import binding_pb2 as pb
from etax.common.v1.types_pb2 import Entry, Role, SubjectType

from etax_platform.errors import Reason
from tests.binding.support import (
    AUTHORITIES,
    BEIJING,
    INSPECTION,
    SHANDONG,
    TAX_SOURCE,
    Binding,
    Person,
    expect,
)
from tests.harness.numbers import uscc

SPECIFIC = Entry.ENTRY_SPECIFIC_SUBJECT
IN_BEIJING = "KQ110105202600001"
IN_SHANDONG = "KQ370102202600002"
OTHERS_IN_BEIJING = "KQ110105202600003"


@dataclass
class Builder:
    """A Shandong construction company with a project in Beijing and one at home."""

    code: str
    lr: Person
    fo: Person
    officer: Person
    invoice_officer: Person
    handler: Person
    contact: Person


@pytest.fixture
def builder(binding: Binding) -> Builder:
    lr, fo = binding.person("张建国"), binding.person("李财务")
    officer, invoice_officer = binding.person("赵办税"), binding.person("孙购票")
    handler, contact = binding.person("周经办"), binding.person("吴联系")
    code = uscc(200)
    binding.bound_enterprise(code, lr, fo)
    binding.tax_officer(code, lr, officer)
    binding.confirm(
        binding.add(code, lr, invoice_officer, Role.ROLE_INVOICE_OFFICER).relation_id,
        invoice_officer,
    )
    binding.record_project(code, IN_BEIJING, BEIJING, INSPECTION, (handler,), (contact,))
    binding.record_project(code, IN_SHANDONG, SHANDONG, TAX_SOURCE, contacts=(contact,))
    # Another company's project with a similar number, in the same province.
    other_lr = binding.person("郑他人")
    other = uscc(201, "110105")
    binding.bound_enterprise(other, other_lr, province=BEIJING)
    binding.record_project(other, OTHERS_IN_BEIJING, BEIJING, INSPECTION)
    return Builder(code, lr, fo, officer, invoice_officer, handler, contact)


def _subject(binding: Binding, person: Person, number: str, **target: object) -> pb.Identity:
    values: dict[str, object] = {
        "entry": SPECIFIC,
        "subject_type": INSPECTION,
        "subject_number": number,
        "province": BEIJING,
    }
    values.update(target)
    return binding.check(person, **values)


def test_d5_enterprise_people_and_report_persons_act_as_the_subject(
    binding: Binding, builder: Builder
) -> None:
    expected = [
        (builder.lr, Role.ROLE_LEGAL_REPRESENTATIVE),
        (builder.fo, Role.ROLE_FINANCIAL_OFFICER),
        (builder.officer, Role.ROLE_TAX_OFFICER),
        (builder.handler, Role.ROLE_CROSS_REGION_HANDLER),
        (builder.contact, Role.ROLE_CROSS_REGION_CONTACT),
    ]
    for person, role in expected:
        # The subject number is the enterprise's USCC/TIN or the project number.
        for number in (builder.code, IN_BEIJING, IN_BEIJING.lower()):
            identity = _subject(binding, person, number)
            assert identity.entry == SPECIFIC
            assert identity.role == role
            assert identity.project_number == IN_BEIJING
            assert identity.enterprise_code == builder.code
            assert identity.subject_type == INSPECTION
            assert identity.tax_authority == AUTHORITIES[BEIJING]


def test_d5_anyone_else_gets_relation_not_found(binding: Binding, builder: Builder) -> None:
    pending_officer = binding.person("钱待定")
    binding.add(builder.code, builder.lr, pending_officer)
    for person in (builder.invoice_officer, pending_officer, binding.person("陌生人")):
        for number in (builder.code, IN_BEIJING):
            error = expect(
                lambda p=person, n=number: _subject(binding, p, n), Reason.RELATION_NOT_FOUND
            )
            assert error.user_text == "未查询到您与该企业的关联关系信息，请确认录入的信息是否正确"


def test_d5_subject_is_reached_in_its_project_province_with_its_type(
    binding: Binding, builder: Builder
) -> None:
    expect(
        lambda: _subject(binding, builder.lr, IN_BEIJING, province=SHANDONG),
        Reason.RELATION_NOT_FOUND,
    )
    expect(
        lambda: _subject(binding, builder.lr, IN_BEIJING, subject_type=TAX_SOURCE),
        Reason.RELATION_NOT_FOUND,
    )
    # The other company's project is not the builder's, even for its handler named elsewhere.
    expect(lambda: _subject(binding, builder.handler, OTHERS_IN_BEIJING), Reason.RELATION_NOT_FOUND)
    home = _subject(
        binding, builder.contact, IN_SHANDONG, province=SHANDONG, subject_type=TAX_SOURCE
    )
    assert (home.project_number, home.role) == (IN_SHANDONG, Role.ROLE_CROSS_REGION_CONTACT)


def test_d5_specific_subject_target_needs_type_number_and_province(
    binding: Binding, builder: Builder
) -> None:
    expect(
        lambda: _subject(binding, builder.lr, IN_BEIJING, province=""),
        Reason.INVALID_ARGUMENT,
        "target.province",
    )
    expect(
        lambda: _subject(
            binding, builder.lr, IN_BEIJING, subject_type=SubjectType.SUBJECT_TYPE_UNSPECIFIED
        ),
        Reason.INVALID_ARGUMENT,
        "target.subject_type",
    )
    expect(
        lambda: _subject(binding, builder.lr, ""), Reason.INVALID_ARGUMENT, "target.subject_number"
    )
    expect(
        lambda: _subject(binding, builder.lr, IN_BEIJING, province="00"),
        Reason.INVALID_ARGUMENT,
        "target.province",
    )


def _search(
    binding: Binding,
    person: Person,
    query: str,
    province: str = BEIJING,
    subject_type: int = SubjectType.SUBJECT_TYPE_UNSPECIFIED,
) -> list[str]:
    response = binding.public.SearchSubjects(
        pb.SearchSubjectsRequest(subject_type=subject_type, query=query, province=province),
        metadata=binding.token(person),
        timeout=10,
    )
    return [s.project_number for s in response.subjects]


def test_d5_subject_search_is_fuzzy_and_limited_to_related_subjects(
    binding: Binding, builder: Builder
) -> None:
    # Both projects in Beijing contain "KQ1101052026"; only the related one is offered.
    assert _search(binding, builder.handler, "KQ1101052026") == [IN_BEIJING]
    assert _search(binding, builder.lr, "kq1101") == [IN_BEIJING]
    assert _search(binding, builder.lr, builder.code[4:12]) == [IN_BEIJING]
    assert _search(binding, builder.lr, "") == [IN_BEIJING]
    assert _search(binding, builder.lr, "2026", SHANDONG) == [IN_SHANDONG]
    assert _search(binding, builder.lr, "2026", BEIJING, TAX_SOURCE) == []
    # No relation: nothing to offer, the page shows "required" (D5).
    assert _search(binding, binding.person("陌生人"), "KQ") == []
    assert _search(binding, builder.invoice_officer, "KQ") == []
    expect(lambda: _search(binding, builder.lr, "KQ%"), Reason.INVALID_ARGUMENT, "query")


def test_d5_switch_tax_authority_lists_the_related_projects(
    binding: Binding, builder: Builder
) -> None:
    second = "KQ110108202600009"
    binding.record_project(builder.code, second, BEIJING, TAX_SOURCE)

    def related(person: Person, province: str = "") -> list[str]:
        response = binding.public.ListRelatedProjects(
            pb.ListRelatedProjectsRequest(province=province),
            metadata=binding.token(person, province=BEIJING),
            timeout=10,
        )
        return [p.project_number for p in response.projects]

    # Empty province: the one the session came through.
    assert related(builder.officer) == [IN_BEIJING, second]
    assert related(builder.handler) == [IN_BEIJING]
    assert related(builder.contact, SHANDONG) == [IN_SHANDONG]
    assert related(builder.invoice_officer) == []


def test_f5_home_province_projects_appear_under_identity_switching(
    binding: Binding, builder: Builder
) -> None:
    at_home = binding.identities(builder.officer, SHANDONG)
    assert sorted((i.entry, i.enterprise_code, i.project_number, i.role) for i in at_home) == [
        (Entry.ENTRY_ENTERPRISE, builder.code, "", Role.ROLE_TAX_OFFICER),
        (Entry.ENTRY_ENTERPRISE, builder.code, IN_SHANDONG, Role.ROLE_TAX_OFFICER),
    ]
    (project,) = [i for i in at_home if i.project_number]
    assert project.subject_type == TAX_SOURCE
    assert project.tax_authority == AUTHORITIES[SHANDONG]
    switched = binding.check(
        builder.officer,
        entry=Entry.ENTRY_ENTERPRISE,
        enterprise_code=builder.code,
        subject_number=IN_SHANDONG,
    )
    assert (switched.project_number, switched.entry) == (IN_SHANDONG, Entry.ENTRY_ENTERPRISE)
    # The Beijing project is a specific subject there, not an identity switch at home.
    in_beijing = binding.identities(builder.officer, BEIJING)
    assert [(i.entry, i.project_number) for i in in_beijing if i.project_number] == [
        (SPECIFIC, IN_BEIJING)
    ]
    expect(
        lambda: binding.check(
            builder.officer,
            entry=Entry.ENTRY_ENTERPRISE,
            enterprise_code=builder.code,
            subject_number=IN_BEIJING,
        ),
        Reason.RELATION_NOT_FOUND,
    )


def test_f5_report_persons_reach_home_projects_only_as_specific_subjects(
    binding: Binding, builder: Builder
) -> None:
    identities = binding.identities(builder.contact, SHANDONG)
    assert [(i.entry, i.project_number, i.role) for i in identities] == [
        (SPECIFIC, IN_SHANDONG, Role.ROLE_CROSS_REGION_CONTACT)
    ]
    expect(
        lambda: binding.check(
            builder.contact,
            entry=Entry.ENTRY_ENTERPRISE,
            enterprise_code=builder.code,
            subject_number=IN_SHANDONG,
        ),
        Reason.RELATION_NOT_FOUND,
    )


def test_d5_new_report_replaces_its_persons(binding: Binding, builder: Builder) -> None:
    successor = binding.person("冯新经办")
    binding.record_project(
        builder.code, IN_BEIJING, BEIJING, INSPECTION, (successor,), (builder.contact,)
    )

    expect(lambda: _subject(binding, builder.handler, IN_BEIJING), Reason.RELATION_NOT_FOUND)
    assert _subject(binding, successor, IN_BEIJING).role == Role.ROLE_CROSS_REGION_HANDLER
    assert _subject(binding, builder.contact, IN_BEIJING).role == Role.ROLE_CROSS_REGION_CONTACT


def test_d5_ended_tax_officer_loses_the_projects(binding: Binding, builder: Builder) -> None:
    (relation,) = [
        r
        for r in binding.enterprise_relations(builder.code, builder.lr)
        if r.role == Role.ROLE_TAX_OFFICER
    ]
    binding.end(relation.relation_id, builder.officer)
    expect(lambda: _subject(binding, builder.officer, IN_BEIJING), Reason.RELATION_NOT_FOUND)
    assert binding.identities(builder.officer) == []


def test_d5_recording_a_project_checks_its_input(binding: Binding, builder: Builder) -> None:
    expect(
        lambda: binding.record_project(uscc(299), "KQ1", BEIJING),
        Reason.INVALID_ARGUMENT,
        "project_number",
    )
    expect(
        lambda: binding.record_project(uscc(299), "KQ110105202600099", BEIJING),
        Reason.NOT_FOUND,
        "enterprise_code",
    )
    expect(
        lambda: binding.record_project(
            builder.code, "KQ110105202600099", BEIJING, SubjectType.SUBJECT_TYPE_UNSPECIFIED
        ),
        Reason.INVALID_ARGUMENT,
        "subject_type",
    )
    nameless = binding.person("")
    expect(
        lambda: binding.record_project(
            builder.code, "KQ110105202600099", BEIJING, contacts=(builder.contact, nameless)
        ),
        Reason.INVALID_ARGUMENT,
        "contacts[1].name",
    )
    # A project number belongs to one enterprise.
    other_lr = binding.person("郑他人")
    other = uscc(202)
    binding.bound_enterprise(other, other_lr)
    expect(
        lambda: binding.record_project(other, IN_BEIJING, BEIJING),
        Reason.STATE_CONFLICT,
        "project_number",
    )
    assert _subject(binding, builder.handler, IN_BEIJING).enterprise_code == builder.code
