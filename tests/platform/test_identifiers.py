"""Phones (C3) and emails (B6) as every service reads them."""

from __future__ import annotations

import pytest

from etax_platform.errors import DomainError, Reason
from etax_platform.identifiers import normalize_email, normalize_phone


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
