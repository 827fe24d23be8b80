"""Document types, validation and normalisation, the blind index (B4-B6)."""

from __future__ import annotations

from datetime import date

import pytest
from etax.common.v1 import types_pb2

from etax_platform.documents import (
    HALL_FIRST_TYPES,
    ONLINE_TYPES,
    OVERSEAS_TYPES,
    Document,
    DocumentType,
    document_blind_index,
    gb11643_check_character,
    looks_like_document,
    parse_document,
    readings,
)
from etax_platform.errors import DomainError, Reason
from etax_platform.pii import PersonalData

T = DocumentType


def _problem(code: int, number: str, **kwargs: object) -> str:
    with pytest.raises(DomainError) as caught:
        parse_document(code, number, **kwargs)  # type: ignore[arg-type]
    assert caught.value.reason is Reason.INVALID_DOCUMENT
    return caught.value.metadata["problem"]


def test_b4_types_carry_the_tax_system_codes_of_the_contract() -> None:
    contract = {
        value.number: value.name.removeprefix("DOCUMENT_TYPE_")
        for value in types_pb2.DocumentType.DESCRIPTOR.values
        if value.number
    }
    assert {int(t): t.name for t in DocumentType} == contract
    assert {int(t) for t in ONLINE_TYPES} == {201, 210, 213, 227, 233, 237, 238}
    assert {int(t) for t in HALL_FIRST_TYPES} == {208, 239, 240, 241}
    assert {int(t) for t in OVERSEAS_TYPES} == {208, 239, 240, 241, 299}


@pytest.mark.parametrize(
    ("code", "number"),
    [
        (201, "11010519491231002X"),
        (237, "810000199408230021"),
        (238, "830000199201300022"),
    ],
)
def test_b4_issue_vectors_are_valid(code: int, number: str) -> None:
    assert parse_document(code, number) == Document(DocumentType(code), number)


def test_b4_issue_vectors_are_invalid() -> None:
    assert _problem(201, "360426199113010079") == "birth_date"  # month 13
    assert _problem(201, "36042619910102009X") == "check_digit"


def test_b4_lower_case_x_and_spaces_are_normalised() -> None:
    assert parse_document(201, " 110105 19491231 002x ").number == "11010519491231002X"
    # Full-width digits as typed by a Chinese input method.
    assert (
        parse_document(201, "１１０１０５１９４９１２３１００２Ｘ").number == "11010519491231002X"
    )


def test_b4_legacy_15_digit_numbers_become_18() -> None:
    assert parse_document(201, "110105491231002").number == "11010519491231002X"
    assert _problem(201, "110105491331002") == "birth_date"


def test_b4_birth_dates_must_be_real() -> None:
    first_17 = "37010220000229001"  # 2000 is a leap year
    assert parse_document(201, first_17 + gb11643_check_character(first_17))
    not_leap = "37010219000229001"
    assert _problem(201, not_leap + gb11643_check_character(not_leap)) == "birth_date"
    future = "37010230000101001"
    number = future + gb11643_check_character(future)
    assert _problem(201, number, today=date(2026, 11, 27)) == "birth_date"


def test_b4_resident_cards_start_with_a_mainland_province() -> None:
    assert _problem(201, "810000199408230021") == "region"


def test_b4_residence_permit_prefixes() -> None:
    assert _problem(237, "830000199201300022") == "region"
    assert _problem(238, "810000199408230021") == "region"
    assert _problem(237, "11010519491231002X") == "region"
    first_17 = "82000019940823002"
    assert parse_document(237, first_17 + gb11643_check_character(first_17))


@pytest.mark.parametrize(
    ("code", "valid", "invalid"),
    [
        (210, ["H12345678", "M1234567890", "h12345678"], ["H1234567", "K12345678", "H123456789"]),
        (213, ["12345678", "1234567890"], ["1234567", "123456789", "T1234567"]),
        (227, ["E12345678", "EA1234567", "G12345678"], ["E1234567", "EA123456", "P12345678"]),
        (233, ["USA110079010101"], ["US110079010101", "USA11007901010"]),
        (208, ["X1234567", "AB12345", "12345678901234567890"], ["AB12", "A-1234567"]),
        (239, ["123456789012345678"], ["1234"]),
        (299, ["AB-123", "Z9"], ["-AB123", "A_B", "A" * 31]),
    ],
)
def test_b4_b6_formats_per_type(code: int, valid: list[str], invalid: list[str]) -> None:
    for number in valid:
        assert parse_document(code, number).number == number.upper()
    for number in invalid:
        assert _problem(code, number) in {"format", "missing"}, number


def test_b4_new_permanent_resident_id_has_a_birth_date_and_check_digit() -> None:
    first_17 = "91184019800101001"
    number = first_17 + gb11643_check_character(first_17)
    assert parse_document(233, number).number == number
    wrong = "X" if number[-1] != "X" else "0"
    assert _problem(233, number[:17] + wrong) == "check_digit"
    assert _problem(233, "811840198001010010") == "format"


def test_unknown_type_and_empty_number_name_their_field() -> None:
    with pytest.raises(DomainError) as caught:
        parse_document(0, "11010519491231002X", type_field="identity.document.type")
    assert caught.value.metadata == {"field": "identity.document.type", "problem": "type"}
    with pytest.raises(DomainError) as caught:
        parse_document(201, "  ", number_field="identity.document.number")
    assert caught.value.metadata["field"] == "identity.document.number"


def test_blind_index_is_over_type_and_normalised_number(personal_data: PersonalData) -> None:
    document = parse_document(201, "11010519491231002x")
    expected = personal_data.blind_index("201:11010519491231002X", "document")
    assert document.blind_index(personal_data) == expected
    assert document_blind_index(personal_data, 201, "11010519491231002X") == expected
    # The same number under another type is another document.
    assert document_blind_index(personal_data, 237, "11010519491231002X") != expected


def test_c2_readings_tell_fixed_formats_from_free_form() -> None:
    assert looks_like_document("11010519491231002x")
    assert looks_like_document("EA1234567")
    assert not looks_like_document("alice_2024")
    assert {d.type for d in readings("X1234567")} == {
        T.FOREIGN_PASSPORT,
        T.FOREIGNER_WORK_PERMIT_A,
        T.FOREIGNER_WORK_PERMIT_B,
        T.FOREIGNER_WORK_PERMIT_C,
        T.OTHER_PERSONAL_DOCUMENT,
    }
    assert not looks_like_document("X1234567")


@pytest.mark.parametrize(
    ("code", "number"),
    [
        (210, "H١٢٣٤٥٦٧٨"),  # Arabic-Indic digits
        (213, "१२३४५६७८"),  # Devanagari digits
        (227, "E١٢٣٤٥٦٧٨"),
        (201, "١١٠١٠٥٤٩١٢٣١٠٠٢"),
    ],
)
def test_b4_digits_of_other_scripts_are_refused_not_stored_as_another_spelling(
    code: int, number: str
) -> None:
    """One document, one spelling: a bare \\d matched every script's decimal digits, so
    H١٢٣٤٥٦٧٨ was a valid permit number beside H12345678 (found reviewing the fuzz)."""
    with pytest.raises(DomainError) as caught:
        parse_document(code, number)
    assert caught.value.reason is Reason.INVALID_DOCUMENT
