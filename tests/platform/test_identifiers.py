"""Phones (C3), emails (B6), subject numbers (D5) and tax authority codes as every service
reads them."""

from __future__ import annotations

import pytest

from etax_platform.errors import DomainError, Reason
from etax_platform.identifiers import (
    normalize_email,
    normalize_phone,
    normalize_subject_number,
    require_tax_authority_code,
)


@pytest.mark.parametrize(
    "raw", ["13812345678", "+8613812345678", "8613812345678", "+86 138 1234 5678", "138-1234-5678"]
)
def test_mainland_mobiles_with_prefixes_normalise_to_eleven_digits(raw: str) -> None:
    assert normalize_phone(raw) == "13812345678"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "12812345678",
        "1381234567",
        "138123456789",
        "+85291234567",
        "１３８１２３４５６７８",
        "13812345678x",
        "010-12345678",
        "13٨١٢٣٤٥٦٧٨",  # Arabic-Indic digits: \d alone matched them
    ],
)
def test_anything_else_is_invalid_phone(raw: str) -> None:
    with pytest.raises(DomainError) as caught:
        normalize_phone(raw)
    assert caught.value.reason is Reason.INVALID_PHONE
    assert caught.value.metadata == {"field": "phone"}


def test_emails_are_lower_cased() -> None:
    assert normalize_email("  John.Smith@Example.COM ") == "john.smith@example.com"


@pytest.mark.parametrize("raw", ["", "john", "john@", "@example.com", "a b@example.com", "x@y"])
def test_malformed_email_is_invalid_email(raw: str) -> None:
    with pytest.raises(DomainError) as caught:
        normalize_email(raw)
    assert caught.value.reason is Reason.INVALID_EMAIL


def test_subject_numbers_are_upper_cased_and_stripped() -> None:
    assert normalize_subject_number(" kq110105-2026 ", "n") == "KQ110105-2026"
    assert normalize_subject_number("91370102MA3C4D5E6M", "n") == "91370102MA3C4D5E6M"


@pytest.mark.parametrize("raw", ["", "-KQ1", "KQ1", "KQ 110105", "KQ_110105", "K" * 65])
def test_malformed_subject_number_names_its_field(raw: str) -> None:
    with pytest.raises(DomainError) as caught:
        normalize_subject_number(raw, "target.subject_number", "请输入项目编号")
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert caught.value.metadata["field"] == "target.subject_number"
    assert caught.value.user_text == "请输入项目编号"


@pytest.mark.parametrize(
    "code", ["1370102000", "137010200000", "1370102000A", " 13701020000", "١٣٧٠١٠٢٠٠٠٠"]
)
def test_tax_authority_code_is_eleven_digits(code: str) -> None:
    assert require_tax_authority_code("13701020000", "code") == "13701020000"
    with pytest.raises(DomainError) as caught:
        require_tax_authority_code(code, "tax_authority.code")
    assert caught.value.metadata["field"] == "tax_authority.code"
