"""F4: a tax agent acts for a client only while listed in the agency's basic-information
form and in that client's agreement form, and while the agreement is in force."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from etax.binding.v1 import binding_pb2 as pb
from etax.common.v1.types_pb2 import Entry, Role
from google.protobuf import timestamp_pb2

from etax_platform.errors import Reason
from tests.binding.support import AUTHORITIES, SHANDONG, Binding, Person, expect
from tests.harness.numbers import uscc

AGENT = Entry.ENTRY_AGENT


@dataclass
class Agency:
    code: str
    client: str
    in_both: Person
    only_in_basic_form: Person
    only_in_agreement: Person


@pytest.fixture
def agency(binding: Binding) -> Agency:
    code, client = uscc(300), uscc(301)
    binding.bound_enterprise(client, binding.person("委托人"))
    in_both, basic, agreement = (
        binding.person("代理甲"),
        binding.person("代理乙"),
        binding.person("代理丙"),
    )
    assert binding.agency_information(code, in_both, basic) == 2
    now = binding.clock.now()
    binding.agreement(code, client, (in_both, agreement), now, now + timedelta(days=365))
    return Agency(code, client, in_both, basic, agreement)


def _agent(binding: Binding, person: Person, agency: str, client: str = "") -> pb.Identity:
    return binding.check(person, entry=AGENT, agency_code=agency, client_code=client)


def test_f4_agent_in_both_forms_acts_for_the_client(binding: Binding, agency: Agency) -> None:
    identity = _agent(binding, agency.in_both, agency.code, agency.client)
    assert identity.entry == AGENT
    assert identity.role == Role.ROLE_TAX_AGENT
    assert (identity.agency_code, identity.client_code) == (agency.code, agency.client)
    assert identity.client_name == "济南测试有限公司"
    assert identity.tax_authority == AUTHORITIES[SHANDONG]
    # The agent entry itself, before a client is chosen.
    login = _agent(binding, agency.in_both, agency.code)
    assert (login.entry, login.agency_code, login.client_code) == (AGENT, agency.code, "")


def test_f4_agent_in_one_form_only_is_refused(binding: Binding, agency: Agency) -> None:
    for person in (agency.only_in_basic_form, agency.only_in_agreement):
        for client in (agency.client, ""):
            expect(
                lambda p=person, c=client: _agent(binding, p, agency.code, c),
                Reason.RELATION_NOT_FOUND,
            )


def test_f4_other_agency_or_client_is_refused(binding: Binding, agency: Agency) -> None:
    expect(lambda: _agent(binding, agency.in_both, uscc(302)), Reason.RELATION_NOT_FOUND)
    expect(
        lambda: _agent(binding, agency.in_both, agency.code, uscc(303)), Reason.RELATION_NOT_FOUND
    )


def test_f4_agreement_grants_access_only_within_its_period(
    binding: Binding, agency: Agency
) -> None:
    later_client = uscc(304)
    start = binding.clock.now() + timedelta(days=10)
    end = start + timedelta(days=30)
    binding.agreement(agency.code, later_client, (agency.in_both,), start, end)

    expect(
        lambda: _agent(binding, agency.in_both, agency.code, later_client),
        Reason.RELATION_NOT_FOUND,
    )
    binding.clock.set(start)
    assert _agent(binding, agency.in_both, agency.code, later_client).client_code == later_client
    # A client not registered here yet has no name to show.
    assert _agent(binding, agency.in_both, agency.code, later_client).client_name == ""
    binding.clock.set(end - timedelta(milliseconds=1))
    assert _agent(binding, agency.in_both, agency.code, later_client).client_code == later_client
    binding.clock.set(end)
    expect(
        lambda: _agent(binding, agency.in_both, agency.code, later_client),
        Reason.RELATION_NOT_FOUND,
    )


def test_f4_agent_login_needs_an_agreement_in_force(binding: Binding, agency: Agency) -> None:
    binding.clock.advance(timedelta(days=366))
    expect(lambda: _agent(binding, agency.in_both, agency.code), Reason.RELATION_NOT_FOUND)


def test_f4_new_forms_replace_the_old_ones(binding: Binding, agency: Agency) -> None:
    # A new basic-information form without the agent revokes every client.
    binding.agency_information(agency.code, agency.only_in_basic_form)
    expect(
        lambda: _agent(binding, agency.in_both, agency.code, agency.client),
        Reason.RELATION_NOT_FOUND,
    )
    binding.agency_information(agency.code, agency.in_both, agency.only_in_basic_form)
    assert _agent(binding, agency.in_both, agency.code, agency.client).client_code

    # A new agreement for the same client replaces its agents, under the same id.
    now = binding.clock.now()
    first = binding.agreement(
        agency.code, agency.client, (agency.in_both,), now, now + timedelta(days=1)
    )
    second = binding.agreement(
        agency.code, agency.client, (agency.only_in_basic_form,), None, now + timedelta(days=1)
    )
    assert first == second
    expect(
        lambda: _agent(binding, agency.in_both, agency.code, agency.client),
        Reason.RELATION_NOT_FOUND,
    )
    assert _agent(binding, agency.only_in_basic_form, agency.code, agency.client).client_code


def test_f4_agent_clients_are_among_the_identities(binding: Binding, agency: Agency) -> None:
    identities = binding.identities(agency.in_both)
    assert [(i.entry, i.agency_code, i.client_code, i.role) for i in identities] == [
        (AGENT, agency.code, agency.client, Role.ROLE_TAX_AGENT)
    ]
    assert binding.identities(agency.only_in_agreement) == []


def test_f4_agency_forms_check_their_input(binding: Binding, agency: Agency) -> None:
    now = binding.clock.now()
    later = now + timedelta(days=1)
    agent = (agency.in_both,)
    expect(
        lambda: binding.agreement(uscc(305), agency.client, agent, now, later),
        Reason.NOT_FOUND,
        "agency_code",
    )
    expect(
        lambda: binding.agreement(agency.code, "12345", agent, now, later),
        Reason.INVALID_ENTERPRISE_CODE,
        "client_code",
    )
    expect(
        lambda: binding.agreement(agency.code, agency.client, agent, now, None),
        Reason.INVALID_ARGUMENT,
        "valid_until",
    )
    expect(
        lambda: binding.agreement(agency.code, agency.client, agent, later, now),
        Reason.INVALID_ARGUMENT,
        "valid_until",
    )
    expect(
        lambda: binding.agreement(agency.code, agency.client, (), now, later),
        Reason.INVALID_ARGUMENT,
        "agents",
    )
    broken = binding.person("坏证件")
    broken.document.number = "??"
    expect(
        lambda: binding.agreement(agency.code, agency.client, (broken,), now, later),
        Reason.INVALID_DOCUMENT,
        "agents[0].number",
    )
    expect(
        lambda: binding.agency_information("91110000600037341N", agency.in_both),
        Reason.INVALID_ENTERPRISE_CODE,
        "agency_code",
    )
    expect(
        lambda: binding.agency_information(agency.code, broken),
        Reason.INVALID_DOCUMENT,
        "agents[0].document.number",
    )
    # Nothing above changed the agent's access.
    assert _agent(binding, agency.in_both, agency.code, agency.client).client_code
    # The same agent twice counts once.
    assert binding.agency_information(agency.code, agency.in_both, agency.in_both) == 1


@pytest.mark.parametrize(
    ("field_name", "stamp"),
    [
        ("valid_until", timestamp_pb2.Timestamp(seconds=253402300799)),  # 9999-12-31T23:59:59Z
        ("valid_until", timestamp_pb2.Timestamp(seconds=2_000_000_000, nanos=1_000_000_000)),
        ("valid_from", timestamp_pb2.Timestamp(seconds=-62135596800)),  # 0001-01-01T00:00:00Z
        ("valid_from", timestamp_pb2.Timestamp(seconds=1_800_000_000, nanos=-1)),
    ],
)
def test_f4_agreement_refuses_an_out_of_range_period(
    binding: Binding, agency: Agency, field_name: str, stamp: timestamp_pb2.Timestamp
) -> None:
    """Found by the fuzzer (issue 11, item 4): these answered INTERNAL."""
    newcomer = binding.person("代理丁")
    request = pb.SubmitAgencyAgreementRequest(
        agency_code=agency.code,
        client_code=agency.client,
        agents=[newcomer.document],
        valid_until=timestamp_pb2.Timestamp(seconds=2_000_000_000),
    )
    getattr(request, field_name).CopyFrom(stamp)
    expect(
        lambda: binding.internal.SubmitAgencyAgreement(request, timeout=10),
        Reason.INVALID_ARGUMENT,
        field_name,
    )
