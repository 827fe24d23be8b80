"""C3, C4 decided by the database: concurrent claims of phones on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from sqlalchemy import func, select

from etax_platform.clock import CST
from etax_platform.documents import Document, DocumentType
from services.auth.models import phones
from services.auth.storage import AccountStore, NewPerson, PhoneClaim
from tests.auth.conftest import new_phone, new_resident_id

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=CST)


def _person(accounts: AccountStore) -> str:
    person_id, _ = accounts.create_person(
        NewPerson(
            document=Document(DocumentType.RESIDENT_IDENTITY_CARD, new_resident_id()),
            name="张三",
            overseas=False,
            real_name_level=4,
            registered_province="37",
            origin="registration",
        ),
        None,
        T0,
    )
    return person_id


def _holds(accounts: AccountStore, person_id: str, number: str) -> bool:
    return any(p.number == number for p in accounts.phones(person_id))


def test_c4_the_newest_check_wins_whatever_the_commit_order(accounts: AccountStore) -> None:
    people = [_person(accounts) for _ in range(16)]
    for _round in range(3):
        number = new_phone()
        offsets = list(range(len(people)))
        random.shuffle(offsets)
        checked_at = {p: T0 + timedelta(seconds=o) for p, o in zip(people, offsets, strict=True)}
        start = threading.Barrier(len(people))

        def claim(person_id: str, number: str = number, start: threading.Barrier = start) -> bool:
            start.wait()
            held = accounts.claim_phone(person_id, PhoneClaim(number, checked_at[person_id]), T0)
            return held is not None

        with ThreadPoolExecutor(len(people)) as pool:
            list(pool.map(claim, people))
        newest = max(people, key=checked_at.__getitem__)
        assert accounts.holder_of_phone(number) == newest
        assert [p for p in people if _holds(accounts, p, number)] == [newest]


def test_c4_many_concurrent_claims_never_leave_two_holders(accounts: AccountStore) -> None:
    people = [_person(accounts) for _ in range(12)]
    numbers = [new_phone() for _ in range(4)]
    claims = [
        (person_id, number, T0 + timedelta(milliseconds=random.randrange(1000)))
        for person_id in people
        for number in numbers
        for _ in range(2)
    ]
    random.shuffle(claims)

    def claim(item: tuple[str, str, datetime]) -> None:
        person_id, number, at = item
        accounts.claim_phone(person_id, PhoneClaim(number, at, make_default=True), T0)

    with ThreadPoolExecutor(24) as pool:
        list(pool.map(claim, claims))
    for number in numbers:
        holders = [p for p in people if _holds(accounts, p, number)]
        newest = max(at for _, n, at in claims if n == number)
        assert len(holders) == 1
        winners = {p for p, n, at in claims if n == number and at == newest}
        assert holders[0] in winners
    with accounts._db.reading() as session:
        assert session.scalar(select(func.count()).select_from(phones)) == len(numbers)
    for person_id in people:
        held = accounts.phones(person_id)
        assert sum(p.is_default for p in held) == (1 if held else 0)


def test_c4_an_older_check_arriving_later_does_not_take_the_phone(
    accounts: AccountStore,
) -> None:
    newer, older = _person(accounts), _person(accounts)
    number = new_phone()
    assert accounts.claim_phone(newer, PhoneClaim(number, T0 + timedelta(minutes=1)), T0)
    assert accounts.claim_phone(older, PhoneClaim(number, T0), T0) is None
    assert accounts.holder_of_phone(number) == newer
    # The same instant is "not older": the later writer takes it.
    assert accounts.claim_phone(older, PhoneClaim(number, T0 + timedelta(minutes=1)), T0)
    assert accounts.holder_of_phone(number) == older


def test_c4_an_imported_phone_takes_only_a_free_number(accounts: AccountStore) -> None:
    holder, imported = _person(accounts), _person(accounts)
    held, free = new_phone(), new_phone()
    accounts.claim_phone(holder, PhoneClaim(held, T0), T0)
    assert accounts.claim_phone(imported, PhoneClaim(held, None), T0) is None
    assert accounts.holder_of_phone(held) == holder
    record = accounts.claim_phone(imported, PhoneClaim(free, None), T0)
    assert record is not None and record.verified_at is None
    # Any real SMS check beats a phone nobody checked here.
    assert accounts.claim_phone(holder, PhoneClaim(free, T0 - timedelta(days=1)), T0)
    assert accounts.holder_of_phone(free) == holder


def test_c3_concurrent_default_changes_keep_one_default(accounts: AccountStore) -> None:
    person_id = _person(accounts)
    numbers = [new_phone() for _ in range(10)]

    def claim(index: int) -> None:
        accounts.claim_phone(
            person_id, PhoneClaim(numbers[index], T0, make_default=index % 2 == 0), T0
        )

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(claim, range(10)))
    held = accounts.phones(person_id)
    assert len(held) == 10
    (default,) = [p for p in held if p.is_default]
    assert numbers.index(default.number) % 2 == 0  # one that asked to be the default
    ids = [p.phone_id for p in held]
    with ThreadPoolExecutor(10) as pool:
        assert all(pool.map(lambda phone_id: accounts.set_default_phone(person_id, phone_id), ids))
    assert sum(p.is_default for p in accounts.phones(person_id)) == 1


def test_c3_a_taken_default_falls_back_to_the_newest_phone(accounts: AccountStore) -> None:
    person_id, taker = _person(accounts), _person(accounts)
    first, second, third = new_phone(), new_phone(), new_phone()
    accounts.claim_phone(person_id, PhoneClaim(first, T0), T0)
    accounts.claim_phone(person_id, PhoneClaim(second, T0 + timedelta(minutes=2)), T0)
    accounts.claim_phone(
        person_id, PhoneClaim(third, T0 + timedelta(minutes=1), make_default=True), T0
    )
    assert [p.number for p in accounts.phones(person_id) if p.is_default] == [third]
    accounts.claim_phone(taker, PhoneClaim(third, T0 + timedelta(minutes=3)), T0)
    assert [(p.number, p.is_default) for p in accounts.phones(person_id)] == [
        (second, True),
        (first, False),
    ]
    # Taking it back later does not revive the old choice: the newest phone is the default.
    accounts.claim_phone(person_id, PhoneClaim(third, T0 + timedelta(minutes=4)), T0)
    assert [p.number for p in accounts.phones(person_id) if p.is_default] == [third]
