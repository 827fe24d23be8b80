"""Account rules as plain functions: registration plans (B2, B4-B6), overseas restriction
(B6), levels (B3), usernames and the CST year (C2), default phones (C3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from etax_platform.clock import CST
from etax_platform.documents import (
    HALL_FIRST_TYPES,
    ONLINE_TYPES,
    OVERSEAS_TYPES,
    Document,
    DocumentType,
)
from etax_platform.errors import DomainError, Reason
from services.auth.domain import (
    Channel,
    PhoneRecord,
    ProvenContact,
    Registration,
    parse_username,
    plan_registration,
    require_enterprise_business,
    require_real_name_level,
    start_of_cst_year,
    with_default,
)
from services.auth.storage import PersonRecord

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=CST)


def _reason(call: object, *args: object, **kwargs: object) -> Reason:
    with pytest.raises(DomainError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value.reason


@pytest.mark.parametrize("kind", sorted(ONLINE_TYPES))
def test_b4_online_types_register_with_sms_and_face(kind: DocumentType) -> None:
    plan = plan_registration(Document(kind, "X"), overseas=False, offline_collected=False)
    assert (plan.face_required, plan.email_required) == (True, False)
    collected = plan_registration(Document(kind, "X"), overseas=False, offline_collected=True)
    assert not collected.face_required  # B2


@pytest.mark.parametrize("kind", sorted(HALL_FIRST_TYPES))
def test_b5_hall_first_types_need_the_hall(kind: DocumentType) -> None:
    document = Document(kind, "X")
    assert _reason(plan_registration, document, overseas=False, offline_collected=False) is (
        Reason.OFFLINE_REAL_NAME_REQUIRED
    )
    plan = plan_registration(document, overseas=False, offline_collected=True)
    assert (plan.face_required, plan.email_required) == (False, False)


@pytest.mark.parametrize("kind", sorted(OVERSEAS_TYPES))
def test_b6_overseas_types_register_by_email_without_the_hall(kind: DocumentType) -> None:
    plan = plan_registration(Document(kind, "X"), overseas=True, offline_collected=False)
    assert (plan.face_required, plan.email_required) == (True, True)


def test_b6_overseas_registration_is_only_for_foreign_documents() -> None:
    for kind in ONLINE_TYPES:
        assert _reason(
            plan_registration, Document(kind, "X"), overseas=True, offline_collected=False
        ) is (Reason.INVALID_DOCUMENT)
    other = Document(DocumentType.OTHER_PERSONAL_DOCUMENT, "X")
    assert _reason(plan_registration, other, overseas=False, offline_collected=True) is (
        Reason.INVALID_DOCUMENT
    )


def _person(*, overseas: bool, collected: bool) -> PersonRecord:
    return PersonRecord(
        person_id="p",
        document=Document(DocumentType.FOREIGN_PASSPORT, "X1234567"),
        name="Jane",
        overseas=overseas,
        offline_collected=collected,
        real_name_level=4,
        face_verified_at=None,
        email=None,
        username=None,
        username_changed_at=None,
        password_hash=None,
        registered_province="37",
        created_at=T0,
    )


def test_b6_overseas_persons_have_no_enterprise_business_until_the_hall() -> None:
    restricted = _person(overseas=True, collected=False)
    assert restricted.overseas_restricted
    assert _reason(require_enterprise_business, restricted.overseas_restricted) is (
        Reason.OVERSEAS_RESTRICTED
    )
    for person in (
        _person(overseas=True, collected=True),
        _person(overseas=False, collected=False),
    ):
        assert not person.overseas_restricted
        require_enterprise_business(person.overseas_restricted)


def test_b3_level_requirement() -> None:
    assert require_real_name_level(4, 4) == 4
    assert require_real_name_level(3, 3) == 3
    assert _reason(require_real_name_level, 3, 4) is Reason.REAL_NAME_LEVEL_TOO_LOW


def test_c2_year_is_the_cst_calendar_year() -> None:
    assert start_of_cst_year(datetime(2026, 12, 31, 20, 0, tzinfo=CST)) == datetime(
        2026, 1, 1, tzinfo=CST
    )
    # 2026-12-31 16:30 UTC is already 2027 in China.
    assert start_of_cst_year(datetime(2026, 12, 31, 16, 30, tzinfo=UTC)) == datetime(
        2027, 1, 1, tzinfo=CST
    )


def test_c2_username_shapes() -> None:
    assert parse_username(" Xiao_Ming ").key == "xiao_ming"
    assert parse_username("小明同学").display == "小明同学"
    for bad in ("13912345678", "EA1234567", "ab", "_abc", "abc def", "a" * 21):
        assert _reason(parse_username, bad) is Reason.INVALID_ARGUMENT


def test_c3_default_phone_is_the_chosen_one_or_the_newest() -> None:
    phones = [
        PhoneRecord("a", "13900000001", T0),
        PhoneRecord("b", "13900000002", T0 + timedelta(minutes=1)),
        PhoneRecord("c", "13900000003", None),
    ]
    assert [(p.phone_id, p.is_default) for p in with_default(phones, "a")] == [
        ("b", False),
        ("a", True),
        ("c", False),
    ]
    assert [p.phone_id for p in with_default(phones, "gone") if p.is_default] == ["b"]
    assert [p.phone_id for p in with_default(phones, None) if p.is_default] == ["b"]
    assert with_default([], "a") == []


def test_registration_record_round_trips() -> None:
    registration = Registration(
        registration_id="r" * 32,
        document_type=DocumentType.RESIDENT_IDENTITY_CARD,
        document_sealed="k1.sealed",
        name_sealed="k1.name",
        overseas=False,
        province="37",
        face_required=True,
        expires_at=T0 + timedelta(minutes=30),
        contact=ProvenContact(Channel.SMS, "x" * 64, T0),
        face_verified_at=T0 + timedelta(seconds=5),
    )
    assert Registration.from_bytes(registration.to_bytes()) == registration
    bare = Registration(**{**registration.__dict__, "contact": None, "face_verified_at": None})
    assert Registration.from_bytes(bare.to_bytes()) == bare
    assert bare.needs_face() and not registration.needs_face()
    assert registration.is_live(T0) and not registration.is_live(T0 + timedelta(minutes=30))
