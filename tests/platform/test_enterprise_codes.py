"""A2: unified social credit codes (GB 32100) and TINs by format."""

from __future__ import annotations

import pytest

from etax_platform.enterprise_codes import (
    USCC_ALPHABET,
    is_valid_enterprise_code,
    is_valid_uscc,
    normalize_enterprise_code,
    uscc_check_character,
)
from etax_platform.errors import DomainError, Reason


@pytest.mark.parametrize("code", ["91110000600037341L", "121200004013590816", "91310115MA1K3BTP2B"])
def test_a2_gb32100_vectors_are_valid(code: str) -> None:
    assert is_valid_uscc(code)
    assert normalize_enterprise_code(code) == code


def test_a2_wrong_check_character_is_invalid() -> None:
    assert not is_valid_uscc("91110000600037341N")
    with pytest.raises(DomainError) as caught:
        normalize_enterprise_code("91110000600037341N", "target.enterprise_code")
    assert caught.value.reason is Reason.INVALID_ENTERPRISE_CODE
    assert caught.value.metadata == {"field": "target.enterprise_code"}


def test_a2_every_single_character_change_of_a_uscc_is_caught() -> None:
    code = "91310115MA1K3BTP2B"
    for position in range(18):
        for char in USCC_ALPHABET:
            changed = code[:position] + char + code[position + 1 :]
            if changed != code:
                assert not is_valid_uscc(changed), changed


@pytest.mark.parametrize("letter", ["I", "O", "Z", "S", "V"])
def test_a2_uscc_alphabet_excludes_i_o_z_s_v(letter: str) -> None:
    assert letter not in USCC_ALPHABET
    assert not is_valid_uscc(f"91310115MA1K3BT{letter}2B")


def test_a2_uscc_division_must_be_digits() -> None:
    # A correct check character does not save a letter in the administrative division.
    body = "9131011AMA1K3BTP2"
    assert not is_valid_uscc(body + uscc_check_character(body))


@pytest.mark.parametrize(
    "code",
    [
        "370102123456789",  # 15: division + organisation code
        "37010212345678X",
        "37010219900101123",  # 17: 15-digit ID number + 2 digits
        "37010219900101123X01",  # 20: 18-character ID number + 2 digits
        "37010219900101123401",
    ],
)
def test_a2_tins_of_15_17_20_characters_are_accepted_by_format(code: str) -> None:
    assert is_valid_enterprise_code(code)


@pytest.mark.parametrize(
    "code",
    [
        "",
        "3701021234567",  # 13
        "3701021234567890",  # 16
        "3701021990010112345",  # 19
        "37010A123456789",  # letter in the division
        "3701021990010112X",  # 17 must be digits
        "37010219900101123X0A",
        "9111000060003734L",  # 17 characters with a letter
        "91110000-00037341L",
        "٣٧٠١٠٢123456789",  # Arabic-Indic digits in the division
        "911١0000600037341L",
    ],
)
def test_a2_malformed_codes_are_refused(code: str) -> None:
    assert not is_valid_enterprise_code(code)
    with pytest.raises(DomainError):
        normalize_enterprise_code(code)


def test_a2_codes_are_normalised_to_upper_case_without_spaces() -> None:
    assert normalize_enterprise_code("  91310115ma1k3btp2b\t") == "91310115MA1K3BTP2B"
    assert normalize_enterprise_code("37010212345678x") == "37010212345678X"
