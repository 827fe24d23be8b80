"""Personal identity documents: types with the tax system's codes, validation, blind index.

Auth (registration, login by document number) and binding (relations waiting for a person
who is not registered yet) must agree on what a valid number is, how it is normalised, and
which blind index finds it; this module is that one definition.

Rules per type (B4-B6), on the number after NFKC (full-width to ASCII), removing white
space and upper-casing:

- 201 resident identity card: 18 characters, GB 11643 check character (ISO 7064 MOD 11-2,
  "X" for 10), a real birth date, a mainland province code; a 15-digit legacy number
  (birth year without "19", no check character) is converted to 18.
- 237 / 238 residence permits for HK/Macao / Taiwan residents: as 201, starting 810000 or
  820000 / 830000.
- 210 HK/Macao travel permit: H or M + 8 or 10 digits.
- 213 Taiwan travel permit: 8 digits (legacy 10).
- 227 Chinese passport: E + 8 digits, E + letter + 7 digits, or the old G + 8 digits.
- 233 foreign permanent resident ID: old 3 letters + 12 digits, or new 18 characters
  starting 9 with a real birth date and the GB 11643 check character.
- 208 foreign passport, 239/240/241 foreigner work permits: 5-20 letters and digits (their
  formats differ by issuing country; the hall checks the document itself, B5).
- 299 other personal document (overseas registration only, B6): 2-30 letters, digits and
  inner hyphens.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from etax_platform.errors import DomainError, Reason
from etax_platform.pii import PersonalData


class DocumentType(enum.IntEnum):
    """etax.common.v1.DocumentType: the value is the core tax system's code."""

    RESIDENT_IDENTITY_CARD = 201
    FOREIGN_PASSPORT = 208
    HK_MACAO_TRAVEL_PERMIT = 210
    TAIWAN_TRAVEL_PERMIT = 213
    CHINESE_PASSPORT = 227
    FOREIGN_PERMANENT_RESIDENT_ID = 233
    HK_MACAO_RESIDENCE_PERMIT = 237
    TAIWAN_RESIDENCE_PERMIT = 238
    FOREIGNER_WORK_PERMIT_A = 239
    FOREIGNER_WORK_PERMIT_B = 240
    FOREIGNER_WORK_PERMIT_C = 241
    OTHER_PERSONAL_DOCUMENT = 299


# B4: registered online directly.
ONLINE_TYPES = frozenset(
    {
        DocumentType.RESIDENT_IDENTITY_CARD,
        DocumentType.HK_MACAO_TRAVEL_PERMIT,
        DocumentType.TAIWAN_TRAVEL_PERMIT,
        DocumentType.CHINESE_PASSPORT,
        DocumentType.FOREIGN_PERMANENT_RESIDENT_ID,
        DocumentType.HK_MACAO_RESIDENCE_PERMIT,
        DocumentType.TAIWAN_RESIDENCE_PERMIT,
    }
)
# B5: the hall collects the person's real-name information first.
HALL_FIRST_TYPES = frozenset(
    {
        DocumentType.FOREIGN_PASSPORT,
        DocumentType.FOREIGNER_WORK_PERMIT_A,
        DocumentType.FOREIGNER_WORK_PERMIT_B,
        DocumentType.FOREIGNER_WORK_PERMIT_C,
    }
)
# B6: overseas registration (境外自然人注册) without the hall, proven by email.
OVERSEAS_TYPES = HALL_FIRST_TYPES | {DocumentType.OTHER_PERSONAL_DOCUMENT}

# (number, field name, today) -> the normalised number, or raises INVALID_DOCUMENT.
_Rule = Callable[[str, str, date | None], str]

_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))
_CHECK_CHARACTERS = "10X98765432"
# GB/T 2260 province codes of the mainland: a resident identity card starts with one, and
# each is a provincial tax bureau (A3).
MAINLAND_PROVINCES = frozenset(
    {
        "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36",
        "37", "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62",
        "63", "64", "65",
    }
)  # fmt: skip
_EARLIEST_BIRTH = date(1900, 1, 1)

# re.ASCII: a bare \d also matches Arabic-Indic and other decimal digits, which NFKC leaves
# alone, so one number would have several spellings (and blind indexes).
_EIGHTEEN = re.compile(r"\d{17}[\dX]", re.ASCII)
_FIFTEEN = re.compile(r"\d{15}", re.ASCII)
_HK_MACAO_TRAVEL = re.compile(r"[HM](\d{8}|\d{10})", re.ASCII)
_TAIWAN_TRAVEL = re.compile(r"\d{8}|\d{10}", re.ASCII)
_CHINESE_PASSPORT = re.compile(r"E\d{8}|E[A-Z]\d{7}|G\d{8}", re.ASCII)
_PERMANENT_RESIDENT_OLD = re.compile(r"[A-Z]{3}\d{12}", re.ASCII)
_FREE_FORM = re.compile(r"[A-Z0-9]{5,20}")
_OTHER = re.compile(r"[A-Z0-9](?:[A-Z0-9-]{0,28}[A-Z0-9])?")


def gb11643_check_character(first_17: str) -> str:
    """The check character of an 18-character GB 11643 number (ISO 7064 MOD 11-2)."""
    total = sum(int(digit) * weight for digit, weight in zip(first_17, _WEIGHTS, strict=True))
    return _CHECK_CHARACTERS[total % 11]


@dataclass(frozen=True)
class Document:
    """A validated, normalised document: the only form stored, indexed or compared."""

    type: DocumentType
    number: str

    def index_value(self) -> str:
        """What the blind index is computed over: "<type code>:<normalised number>"."""
        return f"{int(self.type)}:{self.number}"

    def blind_index(self, personal_data: PersonalData) -> str:
        return document_blind_index(personal_data, self.type, self.number)


def document_blind_index(
    personal_data: PersonalData, document_type: int, normalised_number: str
) -> str:
    """The blind index every service uses to find a document (auth and binding agree)."""
    return personal_data.blind_index(f"{int(document_type)}:{normalised_number}", "document")


def _bad(field: str, problem: str, message: str) -> DomainError:
    return DomainError(Reason.INVALID_DOCUMENT, message, {"field": field, "problem": problem})


def _birth_date(digits: str, field: str, today: date | None) -> None:
    try:
        born = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        raise _bad(field, "birth_date", "证件号码中的出生日期不正确") from None
    if born < _EARLIEST_BIRTH or (today is not None and born > today):
        raise _bad(field, "birth_date", "证件号码中的出生日期不正确")


def _gb11643(number: str, field: str, today: date | None) -> str:
    """An 18-character number with a real birth date at 7-14 and a correct check character."""
    if not _EIGHTEEN.fullmatch(number):
        raise _bad(field, "format", "证件号码应为18位，最后一位可以是数字或X")
    _birth_date(number[6:14], field, today)
    if gb11643_check_character(number[:17]) != number[17]:
        raise _bad(field, "check_digit", "证件号码校验位不正确")
    return number


def _resident_identity_card(number: str, field: str, today: date | None) -> str:
    if _FIFTEEN.fullmatch(number):
        # Legacy 15-digit number: the birth year lacks "19" and there is no check character.
        first_17 = f"{number[:6]}19{number[6:]}"
        number = first_17 + gb11643_check_character(first_17)
    _gb11643(number, field, today)
    if number[:2] not in MAINLAND_PROVINCES:
        raise _bad(field, "region", "居民身份证号码的地区代码不正确")
    return number


def _residence_permit(prefixes: tuple[str, ...]) -> _Rule:
    def rule(number: str, field: str, today: date | None) -> str:
        _gb11643(number, field, today)
        if not number.startswith(prefixes):
            raise _bad(field, "region", f"居住证号码应以{'或'.join(prefixes)}开头")
        return number

    return rule


def _permanent_resident_id(number: str, field: str, today: date | None) -> str:
    if _PERMANENT_RESIDENT_OLD.fullmatch(number):
        return number
    if not number.startswith("9"):
        raise _bad(field, "format", "外国人永久居留身份证号码格式不正确")
    return _gb11643(number, field, today)


def _pattern(pattern: re.Pattern[str], message: str) -> _Rule:
    def rule(number: str, field: str, today: date | None) -> str:
        if not pattern.fullmatch(number):
            raise _bad(field, "format", message)
        return number

    return rule


_RULES: dict[DocumentType, _Rule] = {
    DocumentType.RESIDENT_IDENTITY_CARD: _resident_identity_card,
    DocumentType.HK_MACAO_RESIDENCE_PERMIT: _residence_permit(("810000", "820000")),
    DocumentType.TAIWAN_RESIDENCE_PERMIT: _residence_permit(("830000",)),
    DocumentType.HK_MACAO_TRAVEL_PERMIT: _pattern(
        _HK_MACAO_TRAVEL, "港澳居民来往内地通行证号码应为H或M加8位或10位数字"
    ),
    DocumentType.TAIWAN_TRAVEL_PERMIT: _pattern(
        _TAIWAN_TRAVEL, "台湾居民来往大陆通行证号码应为8位数字（旧版10位）"
    ),
    DocumentType.CHINESE_PASSPORT: _pattern(_CHINESE_PASSPORT, "中国护照号码格式不正确"),
    DocumentType.FOREIGN_PERMANENT_RESIDENT_ID: _permanent_resident_id,
    DocumentType.FOREIGN_PASSPORT: _pattern(_FREE_FORM, "证件号码应为5-20位字母或数字"),
    DocumentType.FOREIGNER_WORK_PERMIT_A: _pattern(_FREE_FORM, "证件号码应为5-20位字母或数字"),
    DocumentType.FOREIGNER_WORK_PERMIT_B: _pattern(_FREE_FORM, "证件号码应为5-20位字母或数字"),
    DocumentType.FOREIGNER_WORK_PERMIT_C: _pattern(_FREE_FORM, "证件号码应为5-20位字母或数字"),
    DocumentType.OTHER_PERSONAL_DOCUMENT: _pattern(_OTHER, "证件号码应为2-30位字母、数字或连字符"),
}


def document_type(code: int, field: str = "document.type") -> DocumentType:
    """The document type of a code; INVALID_DOCUMENT for unspecified or unknown codes."""
    try:
        return DocumentType(code)
    except ValueError:
        raise _bad(field, "type", "证件类型不正确") from None


def normalize_number(raw: str) -> str:
    """Full-width to ASCII, no white space, upper case (a lower-case x is accepted)."""
    return re.sub(r"\s", "", unicodedata.normalize("NFKC", raw)).upper()


def parse_document(
    code: int,
    number: str,
    *,
    today: date | None = None,
    type_field: str = "document.type",
    number_field: str = "document.number",
) -> Document:
    """Validates and normalises a document; raises INVALID_DOCUMENT naming the field.

    `today` (China Standard Time) also refuses birth dates in the future.
    """
    kind = document_type(code, type_field)
    normalised = normalize_number(number)
    if not normalised:
        raise _bad(number_field, "missing", "请输入证件号码")
    if len(normalised) > 64:
        raise _bad(number_field, "format", "证件号码过长")
    return Document(kind, _RULES[kind](normalised, number_field, today))


def readings(value: str) -> list[Document]:
    """Every document a typed-in number can be (a login account or a username has no type).

    Fixed formats rarely overlap; the free-form foreign types (208, 239-241, 299) overlap
    each other, so a caller looks all readings up by their blind indexes.
    """
    normalised = normalize_number(value)
    found = []
    for kind, rule in _RULES.items():
        try:
            found.append(Document(kind, rule(normalised, "account", None)))
        except DomainError:
            continue
    return found


def looks_like_document(value: str) -> bool:
    """True when value is a valid number of a type with a fixed format (not free-form).

    Usernames must not be such numbers, so a login account is never ambiguous (C2).
    """
    return any(document.type not in OVERSEAS_TYPES for document in readings(value))
