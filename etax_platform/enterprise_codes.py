"""Enterprise codes: unified social credit codes (USCC, GB 32100-2015) and older TINs.

An 18-character code is a USCC: registration authority and category (2 characters), the
administrative division (6 digits), the organisation code (9 characters) and a check
character computed over the first 17 with weights 3^i mod 31 in an alphabet without
I, O, Z, S and V. Older taxpayer identification numbers are accepted by format only:
- 15 characters: administrative division (6 digits) + organisation code (9 characters);
- 17 characters: a 15-digit resident ID number + a 2-digit sequence (individual business);
- 20 characters: an 18-character resident ID number + a 2-digit sequence.
"""

from __future__ import annotations

import functools
import re

from etax_platform.errors import DomainError, Reason

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = tuple(pow(3, position, 31) for position in range(17))
_USCC_VALUE = {char: value for value, char in enumerate(USCC_ALPHABET)}
_USCC_CHAR = "[0-9A-HJ-NP-RTUW-Y]"
# re.ASCII: a bare \d also matches Arabic-Indic and other decimal digits, which NFKC leaves
# alone, so one number would have several spellings (and blind indexes).
_USCC_SHAPE = re.compile(rf"{_USCC_CHAR}{{2}}\d{{6}}{_USCC_CHAR}{{10}}", re.ASCII)
_TIN_SHAPES = {
    15: re.compile(r"\d{6}[0-9A-Z]{9}", re.ASCII),
    17: re.compile(r"\d{17}", re.ASCII),
    20: re.compile(r"\d{17}[0-9X]\d{2}", re.ASCII),
}


_CODE_LENGTHS = frozenset((18, *_TIN_SHAPES))


def uscc_check_character(first_17: str) -> str:
    """The GB 32100 check character for the first 17 characters of a USCC."""
    pairs = zip(first_17, _USCC_WEIGHTS, strict=True)  # ValueError unless 17 characters
    try:
        total = sum(_USCC_VALUE[char] * weight for char, weight in pairs)
    except KeyError as error:
        raise ValueError(f"{error.args[0]!r} is not a USCC character") from None
    return USCC_ALPHABET[(31 - total % 31) % 31]


def is_valid_uscc(code: str) -> bool:
    """True for an 18-character USCC (upper case) whose check character is right."""
    return bool(_USCC_SHAPE.fullmatch(code)) and uscc_check_character(code[:17]) == code[17]


def is_valid_enterprise_code(code: str) -> bool:
    """A valid USCC, or a TIN of 15, 17 or 20 characters in its format (upper case)."""
    # Only codes of a possible length reach the cache, so input cannot fill it with
    # long strings.
    return len(code) in _CODE_LENGTHS and _is_valid_code_of_its_length(code)


# A pure function of the code, asked again for the same enterprises on every access check.
@functools.lru_cache(maxsize=65_536)
def _is_valid_code_of_its_length(code: str) -> bool:
    if len(code) == 18:
        return is_valid_uscc(code)
    return bool(_TIN_SHAPES[len(code)].fullmatch(code))


def normalize_enterprise_code(raw: str, field_name: str = "enterprise_code") -> str:
    """The code upper-cased without surrounding spaces; INVALID_ENTERPRISE_CODE if it is
    neither a valid USCC nor a TIN of a known format."""
    code = raw.strip().upper()
    if not is_valid_enterprise_code(code):
        raise DomainError(Reason.INVALID_ENTERPRISE_CODE, metadata={"field": field_name})
    return code
