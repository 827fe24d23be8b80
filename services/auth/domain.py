"""Account rules as plain values and functions: no I/O, time passed in.

Real-name levels (B1-B3), usernames (C2), who counts as overseas-restricted (B6), which
phone is the default (C3), and the registration in progress (B1-B6).
"""

from __future__ import annotations

import enum
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, replace
from datetime import datetime

from etax_platform.clock import CST, from_millis, to_millis
from etax_platform.documents import (
    HALL_FIRST_TYPES,
    OVERSEAS_TYPES,
    Document,
    DocumentType,
    looks_like_document,
)
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.identifiers import (
    normalize_phone,
    require_province,
    require_tax_authority_code,
)

# B1, B2: registered with a face check (or collected by the hall). B3: migrated without one.
LEVEL_FACE_VERIFIED = 4
LEVEL_MIGRATED = 3
LEVELS = range(1, LEVEL_FACE_VERIFIED + 1)


class Purpose(enum.IntEnum):
    """etax.common.v1.VerificationPurpose values auth proves codes and faces for."""

    REGISTRATION = 1
    LOGIN = 2
    PASSWORD_RESET = 3
    PHONE_ADD = 4
    PHONE_RECOVERY = 5
    REAL_NAME_UPGRADE = 6
    UNLOCK = 7
    SPECIFIC_SUBJECT_LOGIN = 9


class Channel(enum.IntEnum):
    """etax.sms.v1.Channel."""

    SMS = 1
    EMAIL = 2


# Person, phone and registration ids: 128 random bits as 32 lower-case hex digits.
_ID = re.compile(r"[0-9a-f]{32}")
_NAME_MAX = 100


def require_id(value: str, field_name: str) -> str:
    if not _ID.fullmatch(value):
        raise invalid(field_name)
    return value


def normalize_name(raw: str, field_name: str = "identity.name") -> str:
    """A person's name as on the document: NFKC, single spaces, no digits or controls."""
    name = " ".join(unicodedata.normalize("NFKC", raw).split())
    if not name or len(name) > _NAME_MAX:
        raise invalid(field_name, message="请输入证件上的姓名")
    if any(ch.isdigit() or unicodedata.category(ch).startswith("C") for ch in name):
        raise invalid(field_name, message="姓名中不能包含数字或特殊控制字符")
    return name


def require_tax_authority(code: str, province: str, name: str) -> None:
    require_tax_authority_code(code, "tax_authority.code", "税务机关代码应为11位数字")
    require_province(province, "tax_authority.province")
    if len(name) > _NAME_MAX:
        raise invalid("tax_authority.name")


# --- C2: usernames ---------------------------------------------------------------------

_USERNAME = re.compile(r"[A-Za-z\u4e00-\u9fff][A-Za-z0-9_\u4e00-\u9fff]{3,19}")


@dataclass(frozen=True)
class Username:
    display: str
    # Uniqueness and login are case-insensitive.
    key: str


def parse_username(raw: str, field_name: str = "username") -> Username:
    """4-20 letters, digits, underscores or Chinese characters, starting with a letter or a
    Chinese character, and never shaped like a phone or a document number (so a login
    account is a phone, a document or a username, never two of them)."""
    name = unicodedata.normalize("NFKC", raw).strip()
    if not _USERNAME.fullmatch(name):
        raise invalid(
            field_name,
            message="用户名为4-20位字母、数字、下划线或汉字，且以字母或汉字开头",
        )
    if looks_like_document(name) or _looks_like_phone(name):
        raise invalid(field_name, message="用户名不能是手机号码或证件号码")
    return Username(name, name.casefold())


def _looks_like_phone(value: str) -> bool:
    try:
        normalize_phone(value)
    except DomainError:
        return False
    return True


def start_of_cst_year(now: datetime) -> datetime:
    """C2 "一年度可修改一次": one change per calendar year (年度) in China Standard Time.

    A change is allowed when the last one happened before 1 January 00:00 CST of the
    current year. Adding the first username is not a change, nor is setting the same one
    again. A change on 31 December allows the next on 1 January: the tax year (纳税年度)
    is the calendar year.
    """
    return datetime(now.astimezone(CST).year, 1, 1, tzinfo=CST)


# --- B3, B6: what a person may do ---------------------------------------------------------


def require_real_name_level(level: int, min_level: int) -> int:
    """B3: risky operations demand level 4; the person upgrades by a face check."""
    if level < min_level:
        raise DomainError(
            Reason.REAL_NAME_LEVEL_TOO_LOW,
            metadata={"real_name_level": str(level), "required_level": str(min_level)},
        )
    return level


def require_enterprise_business(overseas_restricted: bool) -> None:
    """B6: an overseas person not yet collected by the hall has no enterprise business."""
    if overseas_restricted:
        raise DomainError(Reason.OVERSEAS_RESTRICTED)


# --- C3: phones ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PhoneRecord:
    phone_id: str
    number: str
    # The holder's last passed SMS check on it; None: imported, never checked here.
    verified_at: datetime | None
    is_default: bool = False


def with_default(phones: list[PhoneRecord], chosen_id: str | None) -> list[PhoneRecord]:
    """The person's phones, newest verification first, exactly one default if any.

    The chosen default wins while the person holds it; when it was removed or taken by
    another person (C4), the phone verified most recently takes its place.
    """
    oldest = datetime.min.replace(tzinfo=CST)
    ordered = sorted(phones, key=lambda p: (p.verified_at or oldest, p.phone_id), reverse=True)
    held = {p.phone_id for p in ordered}
    default_id = chosen_id if chosen_id in held else (ordered[0].phone_id if ordered else None)
    return [replace(p, is_default=p.phone_id == default_id) for p in ordered]


# --- B1-B6: a registration in progress ------------------------------------------------------


@dataclass(frozen=True)
class RegistrationPlan:
    """What StartRegistration decided: which steps the person must pass."""

    face_required: bool
    email_required: bool


def plan_registration(
    document: Document, *, overseas: bool, offline_collected: bool
) -> RegistrationPlan:
    """B4-B6: which document types register how.

    - B4: the seven online types register with SMS and face.
    - B5: foreign passports and work permits need the hall's offline collection first
      (then SMS, no face: B2).
    - B6: overseas registration takes a foreign passport, a work permit or another
      personal document without the hall, proven by email; the person stays restricted
      until the hall collects them.
    - B2: when the hall collected the person, the face step is skipped.
    """
    kind = document.type
    if overseas:
        if kind not in OVERSEAS_TYPES:
            raise DomainError(
                Reason.INVALID_DOCUMENT,
                "境外自然人注册请使用外国护照、外国人工作许可证或其他个人证件",
                {"field": "identity.document.type", "problem": "type"},
            )
    elif kind == DocumentType.OTHER_PERSONAL_DOCUMENT:
        raise DomainError(
            Reason.INVALID_DOCUMENT,
            "其他个人证件仅可用于境外自然人注册",
            {"field": "identity.document.type", "problem": "type"},
        )
    elif kind in HALL_FIRST_TYPES and not offline_collected:
        raise DomainError(Reason.OFFLINE_REAL_NAME_REQUIRED)
    return RegistrationPlan(face_required=not offline_collected, email_required=overseas)


@dataclass(frozen=True)
class ProvenContact:
    """A phone or email the registrant proved by code, known by its blind index (the
    registrant names it again when completing)."""

    channel: Channel
    recipient_index: str
    verified_at: datetime


@dataclass(frozen=True)
class Registration:
    """A registration between its steps, kept in the key-value store until its deadline.

    Personal numbers are sealed (encrypted) even here; nothing of it reaches the database
    until CompleteRegistration creates the person in one transaction.
    """

    registration_id: str
    document_type: DocumentType
    document_sealed: str
    name_sealed: str
    overseas: bool
    province: str
    face_required: bool
    expires_at: datetime
    contact: ProvenContact | None = None
    face_verified_at: datetime | None = None

    def is_live(self, now: datetime) -> bool:
        return now < self.expires_at

    def needs_face(self) -> bool:
        return self.face_required and self.face_verified_at is None

    def to_bytes(self) -> bytes:
        body = asdict(self)
        body["expires_at"] = to_millis(self.expires_at)
        body["document_type"] = int(self.document_type)
        if self.face_verified_at is not None:
            body["face_verified_at"] = to_millis(self.face_verified_at)
        if self.contact is not None:
            body["contact"]["channel"] = int(self.contact.channel)
            body["contact"]["verified_at"] = to_millis(self.contact.verified_at)
        return json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> Registration:
        body = json.loads(raw)
        contact = body.pop("contact")
        face_verified_at = body.pop("face_verified_at")
        return Registration(
            **{
                **body,
                "document_type": DocumentType(body["document_type"]),
                "expires_at": from_millis(body["expires_at"]),
            },
            contact=None
            if contact is None
            else ProvenContact(
                channel=Channel(contact["channel"]),
                recipient_index=contact["recipient_index"],
                verified_at=from_millis(contact["verified_at"]),
            ),
            face_verified_at=None if face_verified_at is None else from_millis(face_verified_at),
        )
