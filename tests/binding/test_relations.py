"""F1, F3: relations with two-way confirmation, who may confirm, withdraw and end them,
end dates, races, and the lists and access checks built on them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import grpc
import pytest
from etax.binding.v1 import binding_pb2 as pb
from etax.common.v1.types_pb2 import Entry, Role
from google.protobuf import timestamp_pb2
from sqlalchemy import NullPool, create_engine, text

from etax_platform.errors import DomainError, Reason, from_rpc_error
from tests.binding.support import Binding, Person, expect
from tests.harness.numbers import uscc

PENDING = pb.RELATION_STATE_PENDING
ACTIVE = pb.RELATION_STATE_ACTIVE
REJECTED = pb.RELATION_STATE_REJECTED
WITHDRAWN = pb.RELATION_STATE_WITHDRAWN
ENDED = pb.RELATION_STATE_ENDED
EXPIRED = pb.RELATION_STATE_EXPIRED


@pytest.fixture
def company(binding: Binding) -> tuple[str, Person, Person]:
    """An enterprise whose legal representative and financial officer are bound."""
    lr, fo = binding.person("张建国"), binding.person("李财务")
    code = uscc(100)
    binding.bound_enterprise(code, lr, fo)
    return code, lr, fo


# --- F1(a): the person applies, the enterprise confirms ------------------------------


@pytest.mark.parametrize("confirmer", ["legal_representative", "financial_officer"])
def test_f1a_application_is_bound_when_lr_or_fo_confirms(
    binding: Binding, company: tuple[str, Person, Person], confirmer: str
) -> None:
    code, lr, fo = company
    applicant = binding.person("王办税")
    applied = binding.apply(code, applicant)
    assert (applied.state, applied.confirming_party) == (PENDING, pb.CONFIRMING_PARTY_ENTERPRISE)
    expect(lambda: binding.check_enterprise(applicant, code), Reason.RELATION_NOT_FOUND)
    # The applicant does not see it among their own confirmations; the enterprise does.
    assert binding.pending(applicant) == []
    assert [r.relation_id for r in binding.enterprise_relations(code, lr, PENDING)] == [
        applied.relation_id
    ]

    confirmed = binding.confirm(
        applied.relation_id, lr if confirmer == "legal_representative" else fo
    )

    assert confirmed.state == ACTIVE
    assert binding.check_enterprise(applicant, code).role == Role.ROLE_TAX_OFFICER


def test_f1a_only_lr_or_fo_confirm_an_application(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, _ = company
    officer = binding.person("赵办税")
    binding.tax_officer(code, lr, officer)
    applicant, stranger = binding.person("王申请"), binding.person("陌生人")
    applied = binding.apply(code, applicant)

    for person in (officer, stranger, applicant):
        expect(
            lambda p=person: binding.confirm(applied.relation_id, p),
            Reason.NOT_AUTHORIZED_TO_CONFIRM,
        )
        expect(
            lambda p=person: binding.reject(applied.relation_id, p),
            Reason.NOT_AUTHORIZED_TO_CONFIRM,
        )
    assert binding.enterprise_relations(code, lr, PENDING)[0].relation_id == applied.relation_id


def test_f1a_manager_cannot_confirm_their_own_application(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, fo = company
    applied = binding.apply(code, fo, Role.ROLE_INVOICE_OFFICER)
    expect(lambda: binding.confirm(applied.relation_id, fo), Reason.NOT_AUTHORIZED_TO_CONFIRM)
    assert binding.confirm(applied.relation_id, lr).state == ACTIVE


def test_f1a_rejected_application_grants_nothing(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, _ = company
    applicant = binding.person("王申请")
    applied = binding.apply(code, applicant)

    assert binding.reject(applied.relation_id, lr).state == REJECTED

    expect(lambda: binding.check_enterprise(applicant, code), Reason.RELATION_NOT_FOUND)
    expect(lambda: binding.confirm(applied.relation_id, lr), Reason.STATE_CONFLICT)
    # A new application is possible after a rejection.
    assert binding.apply(code, applicant).state == PENDING


def test_f1a_applicant_withdraws_and_only_they_may(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, _ = company
    applicant = binding.person("王申请")
    applied = binding.apply(code, applicant)

    expect(lambda: binding.withdraw(applied.relation_id, lr), Reason.NOT_AUTHORIZED_TO_CONFIRM)
    assert binding.withdraw(applied.relation_id, applicant).state == WITHDRAWN
    expect(lambda: binding.confirm(applied.relation_id, lr), Reason.STATE_CONFLICT)


def test_f1a_second_application_while_one_is_pending_is_a_conflict(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, _, _ = company
    applicant = binding.person("王申请")
    applied = binding.apply(code, applicant)
    error = expect(lambda: binding.apply(code, applicant), Reason.STATE_CONFLICT)
    assert error.metadata["relation_id"] == applied.relation_id
    # Another role is another relation.
    assert binding.apply(code, applicant, Role.ROLE_INVOICE_OFFICER).state == PENDING


def test_f1a_application_checks_its_input(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, _, _ = company
    applicant = binding.person("王申请")
    expect(
        lambda: binding.apply(code, applicant, Role.ROLE_LEGAL_REPRESENTATIVE),
        Reason.INVALID_ARGUMENT,
        "role",
    )
    expect(
        lambda: binding.apply(code, applicant, Role.ROLE_UNSPECIFIED),
        Reason.INVALID_ARGUMENT,
        "role",
    )
    expect(
        lambda: binding.apply("91110000600037341N", applicant),
        Reason.INVALID_ENTERPRISE_CODE,
        "enterprise_code",
    )
    expect(lambda: binding.apply(uscc(999), applicant), Reason.NOT_FOUND, "enterprise_code")


# --- F1(b): the enterprise adds, the person confirms ---------------------------------


def test_f1b_added_person_registers_later_and_confirms(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, _ = company
    newcomer = binding.person("小明", registered=False)
    added = binding.add(code, lr, newcomer)
    assert (added.state, added.confirming_party) == (PENDING, pb.CONFIRMING_PARTY_PERSON)
    assert added.person_id == ""
    assert added.masked_person_name == "小*"
    assert added.masked_document_number == (
        newcomer.document.number[:4] + "*" * 10 + newcomer.document.number[-4:]
    )

    binding.register(newcomer)
    (waiting,) = binding.pending(newcomer)
    assert waiting.relation_id == added.relation_id
    assert binding.confirm(added.relation_id, newcomer).state == ACTIVE
    identity = binding.check_enterprise(newcomer, code)
    assert (identity.entry, identity.role) == (Entry.ENTRY_ENTERPRISE, Role.ROLE_TAX_OFFICER)
    listed = {r.relation_id: r for r in binding.enterprise_relations(code, lr)}
    assert listed[added.relation_id].person_id == newcomer.person_id


def test_f1b_registered_person_shows_their_person_id_at_once(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, _ = company
    known = binding.person("小红")
    assert binding.add(code, lr, known).person_id == known.person_id


def test_f1b_only_lr_or_fo_may_add_people(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, _ = company
    officer = binding.person("赵办税")
    binding.tax_officer(code, lr, officer)
    newcomer = binding.person("小明")
    expect(lambda: binding.add(code, officer, newcomer), Reason.NOT_AUTHORIZED_TO_CONFIRM)
    expect(lambda: binding.enterprise_relations(code, officer), Reason.NOT_AUTHORIZED_TO_CONFIRM)
    assert binding.pending(newcomer) == []


def test_f1b_unconfirmed_legal_representative_may_not_add_people(binding: Binding) -> None:
    lr = binding.person("张建国")
    code = uscc(101)
    binding.register_enterprise(code, lr)
    expect(lambda: binding.add(code, lr, binding.person("小明")), Reason.NOT_AUTHORIZED_TO_CONFIRM)


def test_f1b_only_the_added_person_confirms(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, fo = company
    newcomer = binding.person("小明")
    added = binding.add(code, lr, newcomer)
    for person in (lr, fo, binding.person("陌生人")):
        expect(
            lambda p=person: binding.confirm(added.relation_id, p), Reason.NOT_AUTHORIZED_TO_CONFIRM
        )
    expect(lambda: binding.check_enterprise(newcomer, code), Reason.RELATION_NOT_FOUND)


def test_f1b_person_rejects_and_enterprise_withdraws(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, fo = company
    first, second = binding.person("小明"), binding.person("小红")
    rejected = binding.add(code, lr, first)
    expect(lambda: binding.withdraw(rejected.relation_id, first), Reason.NOT_AUTHORIZED_TO_CONFIRM)
    assert binding.reject(rejected.relation_id, first).state == REJECTED

    withdrawn = binding.add(code, lr, second)
    assert binding.withdraw(withdrawn.relation_id, fo).state == WITHDRAWN
    assert binding.pending(second) == []
    expect(lambda: binding.confirm(withdrawn.relation_id, second), Reason.STATE_CONFLICT)


def test_f2_registration_relation_is_not_withdrawn_but_rejected(binding: Binding) -> None:
    lr = binding.person("张建国")
    code = uscc(102)
    relation = binding.register_enterprise(code, lr).relations[0]
    expect(lambda: binding.withdraw(relation.relation_id, lr), Reason.PERMISSION_DENIED)
    assert binding.reject(relation.relation_id, lr).state == REJECTED


def test_f1b_add_person_checks_its_input(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, _ = company
    newcomer = binding.person("小明")
    newcomer.document.number = "12"
    expect(
        lambda: binding.add(code, lr, newcomer), Reason.INVALID_DOCUMENT, "person.document.number"
    )
    nameless = binding.person("")
    expect(lambda: binding.add(code, lr, nameless), Reason.INVALID_ARGUMENT, "person.name")
    past = binding.clock.now() - timedelta(days=1)
    expect(
        lambda: binding.add(code, lr, binding.person("小红"), valid_until=past),
        Reason.INVALID_ARGUMENT,
        "valid_until",
    )


@pytest.mark.parametrize(
    "valid_until",
    [
        timestamp_pb2.Timestamp(seconds=253402300799),  # 9999-12-31T23:59:59Z
        timestamp_pb2.Timestamp(seconds=2_000_000_000, nanos=1_000_000_000),
        timestamp_pb2.Timestamp(seconds=2_000_000_000, nanos=-5),
    ],
)
def test_f1b_add_person_refuses_an_out_of_range_end_date(
    binding: Binding, company: tuple[str, Person, Person], valid_until: timestamp_pb2.Timestamp
) -> None:
    """Found by the fuzzer (issue 11, item 4): these answered INTERNAL."""
    code, lr, _ = company
    request = pb.AddPersonRequest(
        enterprise_code=code,
        person=binding.person("小远").named,
        role=Role.ROLE_TAX_OFFICER,
        valid_until=valid_until,
    )
    expect(
        lambda: binding.public.AddPerson(request, metadata=binding.token(lr), timeout=10),
        Reason.INVALID_ARGUMENT,
        "valid_until",
    )
    assert binding.pending(binding.person("小远")) == []


# --- ending, end dates ---------------------------------------------------------------


def test_f1_person_or_enterprise_ends_an_active_relation(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, fo = company
    first, second = binding.person("小明"), binding.person("小红")
    first_relation = binding.tax_officer(code, lr, first)
    second_relation = binding.tax_officer(code, lr, second)

    expect(
        lambda: binding.end(first_relation.relation_id, second), Reason.NOT_AUTHORIZED_TO_CONFIRM
    )
    assert binding.end(first_relation.relation_id, first).state == ENDED
    assert binding.end(second_relation.relation_id, fo).state == ENDED

    for person in (first, second):
        expect(lambda p=person: binding.check_enterprise(p, code), Reason.RELATION_NOT_FOUND)
    expect(lambda: binding.end(first_relation.relation_id, first), Reason.STATE_CONFLICT)


def test_f1_lr_and_fo_relations_are_ended_only_by_their_person(binding: Binding) -> None:
    lr, fo = binding.person("张建国"), binding.person("李财务")
    code = uscc(103)
    relations = binding.bound_enterprise(code, lr, fo).relations
    expect(lambda: binding.end(relations[1].relation_id, lr), Reason.NOT_AUTHORIZED_TO_CONFIRM)
    assert binding.end(relations[1].relation_id, fo).state == ENDED


def test_f1_relation_past_its_end_date_no_longer_grants_access(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, _ = company
    officer = binding.person("小明")
    valid_until = binding.clock.now() + timedelta(days=30)
    added = binding.add(code, lr, officer, valid_until=valid_until)
    binding.confirm(added.relation_id, officer)
    assert binding.check_enterprise(officer, code).role == Role.ROLE_TAX_OFFICER

    binding.clock.set(valid_until - timedelta(seconds=1))
    assert binding.check_enterprise(officer, code).role == Role.ROLE_TAX_OFFICER
    binding.clock.set(valid_until)

    expect(lambda: binding.check_enterprise(officer, code), Reason.RELATION_NOT_FOUND)
    assert [i.enterprise_code for i in binding.identities(officer)] == []
    listed = {r.relation_id: r.state for r in binding.enterprise_relations(code, lr)}
    assert listed[added.relation_id] == EXPIRED
    assert [r.relation_id for r in binding.enterprise_relations(code, lr, EXPIRED)] == [
        added.relation_id
    ]
    expect(lambda: binding.end(added.relation_id, officer), Reason.STATE_CONFLICT)
    # The enterprise can authorise the person again.
    again = binding.add(code, lr, officer)
    binding.confirm(again.relation_id, officer)
    assert binding.check_enterprise(officer, code).role == Role.ROLE_TAX_OFFICER


def test_f1_pending_relation_past_its_end_date_cannot_be_confirmed(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, _ = company
    officer = binding.person("小明")
    valid_until = binding.clock.now() + timedelta(days=1)
    added = binding.add(code, lr, officer, valid_until=valid_until)
    binding.clock.advance(timedelta(days=2))

    assert binding.pending(officer) == []
    error = expect(lambda: binding.confirm(added.relation_id, officer), Reason.STATE_CONFLICT)
    assert error.metadata["state"] == "RELATION_STATE_EXPIRED"


def test_f1_expired_manager_relation_cannot_confirm(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    """An FO of an enterprise (registration) is a manager; an invoice officer is not."""
    code, lr, _ = company
    invoice_officer = binding.person("小票")
    binding.tax_officer(code, lr, invoice_officer)
    applied = binding.apply(code, binding.person("王申请"))
    expect(
        lambda: binding.confirm(applied.relation_id, invoice_officer),
        Reason.NOT_AUTHORIZED_TO_CONFIRM,
    )


# --- races ---------------------------------------------------------------------------


def _race(
    calls: list[Callable[[], object]], once_started: Callable[[], None] = lambda: None
) -> tuple[int, list[DomainError]]:
    """Runs the calls at once; the number that succeeded and the errors of the others."""
    barrier = threading.Barrier(len(calls))
    successes: list[object] = []
    errors: list[DomainError] = []
    lock = threading.Lock()

    def run(call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            result = call()
        except grpc.RpcError as failure:
            error = from_rpc_error(failure)
            assert error is not None, failure
            with lock:
                errors.append(error)
        else:
            with lock:
                successes.append(result)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    once_started()
    for thread in threads:
        thread.join()
    return len(successes), errors


@contextmanager
def _all_wait_for_the_row(
    database_url: str, relation_id: str, waiters: int
) -> Iterator[Callable[[], None]]:
    """On PostgreSQL the test holds the relation's row lock until `waiters` transactions
    wait for it: all of them have read the relation as pending before any decides, so only
    the database's conditional write can let exactly one win. SQLite runs writing
    transactions one at a time, so there the calls simply race."""
    if not database_url.startswith("postgresql"):
        yield lambda: None
        return
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with (
            engine.connect() as holder,
            engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher,
        ):
            holder.execute(
                text("SELECT 1 FROM relations WHERE relation_id = :id FOR UPDATE"),
                {"id": relation_id},
            )
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )

            def release() -> None:
                deadline = time.monotonic() + 30
                while watcher.execute(waiting).scalar_one() < waiters:
                    assert time.monotonic() < deadline, "the calls never reached the row"
                    time.sleep(0.01)
                holder.commit()

            yield release
    finally:
        engine.dispose()


def test_f1_concurrent_double_confirmation_exactly_one_wins(
    binding: Binding, company: tuple[str, Person, Person], binding_database_url: str
) -> None:
    code, lr, fo = company
    applicant = binding.person("王申请")
    applied = binding.apply(code, applicant)

    confirmers = [lr, fo] * 6
    waiting = _all_wait_for_the_row(binding_database_url, applied.relation_id, len(confirmers))
    with waiting as release:
        won, errors = _race(
            [lambda p=person: binding.confirm(applied.relation_id, p) for person in confirmers],
            once_started=release,
        )

    assert won == 1
    assert {e.reason for e in errors} == {Reason.STATE_CONFLICT}
    assert len(errors) == len(confirmers) - 1
    mine = [r for r in binding.enterprise_relations(code, lr) if r.role == Role.ROLE_TAX_OFFICER]
    assert [(r.relation_id, r.state) for r in mine] == [(applied.relation_id, ACTIVE)]


def test_f1_concurrent_confirm_and_reject_exactly_one_wins(
    binding: Binding, company: tuple[str, Person, Person], binding_database_url: str
) -> None:
    code, lr, _ = company
    officer = binding.person("小明")
    added = binding.add(code, lr, officer)

    calls: list[Callable[[], object]] = []
    for _ in range(5):
        calls.append(lambda: binding.confirm(added.relation_id, officer))
        calls.append(lambda: binding.reject(added.relation_id, officer))
    with _all_wait_for_the_row(binding_database_url, added.relation_id, len(calls)) as release:
        won, errors = _race(calls, once_started=release)

    assert won == 1
    assert {e.reason for e in errors} == {Reason.STATE_CONFLICT}
    (relation,) = [
        r for r in binding.enterprise_relations(code, lr) if r.role == Role.ROLE_TAX_OFFICER
    ]
    assert relation.state in (ACTIVE, REJECTED)


def test_f1_concurrent_application_and_addition_make_one_relation(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, fo = company
    person = binding.person("小明")

    calls: list[Callable[[], object]] = []
    for _ in range(4):
        calls.append(lambda: binding.apply(code, person))
        calls.append(lambda: binding.add(code, lr, person))
        calls.append(lambda: binding.add(code, fo, person))
    won, errors = _race(calls)

    assert won == 1
    assert {e.reason for e in errors} == {Reason.STATE_CONFLICT}
    live = [
        r
        for r in binding.enterprise_relations(code, lr, PENDING, ACTIVE)
        if r.role == Role.ROLE_TAX_OFFICER
    ]
    assert len(live) == 1


# --- lists and identities (F1, F3) ---------------------------------------------------


def test_f1_lists_show_masked_people_and_filter_by_state(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, fo = company
    officer, applicant = binding.person("欧阳小明"), binding.person("王申请")
    binding.tax_officer(code, lr, officer)
    applied = binding.apply(code, applicant)

    everyone = binding.enterprise_relations(code, fo)
    assert sorted((r.role, r.state, r.masked_person_name) for r in everyone) == [
        (Role.ROLE_LEGAL_REPRESENTATIVE, ACTIVE, "张*国"),
        (Role.ROLE_FINANCIAL_OFFICER, ACTIVE, "李*务"),
        (Role.ROLE_TAX_OFFICER, PENDING, "王*请"),
        (Role.ROLE_TAX_OFFICER, ACTIVE, "欧**明"),
    ]
    assert officer.document.number not in str(everyone)
    assert [r.relation_id for r in binding.enterprise_relations(code, fo, PENDING)] == [
        applied.relation_id
    ]
    expect(lambda: binding.enterprise_relations(code, fo, 42), Reason.INVALID_ARGUMENT, "states")


def test_f1_pending_confirmations_are_the_persons_own(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, lr, _ = company
    first, second = binding.person("小明"), binding.person("小红")
    added = binding.add(code, lr, first)
    binding.add(code, lr, second, Role.ROLE_INVOICE_OFFICER)
    assert [r.relation_id for r in binding.pending(first)] == [added.relation_id]
    assert [r.role for r in binding.pending(second)] == [Role.ROLE_INVOICE_OFFICER]


def test_f1_unknown_or_malformed_relation_ids(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    _, lr, _ = company
    expect(lambda: binding.confirm("0" * 32, lr), Reason.NOT_FOUND, "relation_id")
    expect(lambda: binding.confirm("", lr), Reason.INVALID_ARGUMENT, "relation_id")
    expect(lambda: binding.confirm("x' OR 1=1", lr), Reason.INVALID_ARGUMENT, "relation_id")


def test_f3_person_switches_between_enterprise_identities(binding: Binding) -> None:
    person = binding.person("张多企")
    other_lr = binding.person("李老板")
    first, second = uscc(110), uscc(111)
    binding.bound_enterprise(first, person)
    binding.bound_enterprise(second, other_lr)
    binding.tax_officer(second, other_lr, person)
    # Several roles in one enterprise: the identity shows the foremost.
    binding.confirm(
        binding.add(first, person, person, Role.ROLE_INVOICE_OFFICER).relation_id, person
    )

    identities = binding.identities(person)

    assert sorted((i.entry, i.enterprise_code, i.role) for i in identities) == sorted(
        [
            (Entry.ENTRY_ENTERPRISE, first, Role.ROLE_LEGAL_REPRESENTATIVE),
            (Entry.ENTRY_ENTERPRISE, second, Role.ROLE_TAX_OFFICER),
        ]
    )
    assert binding.check_enterprise(person, first).role == Role.ROLE_LEGAL_REPRESENTATIVE
    assert binding.check_enterprise(person, second).role == Role.ROLE_TAX_OFFICER
    assert binding.check_enterprise(person, second).tax_authority.province == "37"


def test_f3_access_check_refuses_unknown_enterprise_with_the_exact_text(
    binding: Binding, company: tuple[str, Person, Person]
) -> None:
    code, _, _ = company
    stranger = binding.person("陌生人")
    for target in (uscc(998), code):
        status, error = (None, None)
        with pytest.raises(grpc.RpcError) as caught:
            binding.check_enterprise(stranger, target)
        status, error = caught.value.code(), from_rpc_error(caught.value)
        assert status == grpc.StatusCode.PERMISSION_DENIED
        assert error is not None
        assert error.reason is Reason.RELATION_NOT_FOUND
        assert error.user_text == "未查询到您与该企业的关联关系信息，请确认录入的信息是否正确"


def test_f3_access_check_input_errors(binding: Binding) -> None:
    person = binding.person("张三丰")
    expect(lambda: binding.check(person), Reason.INVALID_ARGUMENT, "target.entry")
    expect(
        lambda: binding.check(person, entry=Entry.ENTRY_ENTERPRISE),
        Reason.INVALID_ENTERPRISE_CODE,
        "target.enterprise_code",
    )
    expect(
        lambda: binding.internal.CheckAccess(
            pb.CheckAccessRequest(target=pb.Target(entry=Entry.ENTRY_NATURAL_PERSON)), timeout=10
        ),
        Reason.INVALID_ARGUMENT,
        "person_id",
    )
    natural = binding.check(person, entry=Entry.ENTRY_NATURAL_PERSON)
    assert natural.entry == Entry.ENTRY_NATURAL_PERSON
