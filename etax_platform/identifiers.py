"""Validation and normalisation of identifiers every service meets: phones, emails,
subject (project) numbers, tax authority codes and the provinces of the bureaus."""

from __future__ import annotations

import re

from etax_platform.documents import MAINLAND_PROVINCES
from etax_platform.errors import DomainError, Reason, invalid

# re.ASCII: a bare \d also matches Arabic-Indic and other decimal digits, which NFKC leaves
# alone, so one number would have several spellings (and blind indexes).
_MAINLAND_MOBILE = re.compile(r"1[3-9]\d{9}", re.ASCII)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}")
_MAX_EMAIL = 254
# A cross-region project number, or (as a subject number) a USCC/TIN: what
# etax.binding.v1.Target.subject_number accepts.
_SUBJECT_NUMBER = re.compile(r"[0-9A-Z][0-9A-Z-]{3,63}")
_TAX_AUTHORITY_CODE = re.compile(r"\d{11}", re.ASCII)


def normalize_phone(raw: str, field_name: str = "phone") -> str:
    """A mainland mobile number as 11 digits; +86 / 86 prefixes, spaces and dashes dropped.

    Raises INVALID_PHONE for anything else.
    """
    compact = re.sub(r"[\s-]", "", raw)
    if compact.startswith("+86"):
        compact = compact[3:]
    elif compact.startswith("86") and len(compact) == 13:
        compact = compact[2:]
    if not _MAINLAND_MOBILE.fullmatch(compact):
        raise DomainError(Reason.INVALID_PHONE, metadata={"field": field_name})
    return compact


def normalize_email(raw: str, field_name: str = "email") -> str:
    """A lower-case email address; raises INVALID_EMAIL when it is not one."""
    email = raw.strip().lower()
    if len(email) > _MAX_EMAIL or not _EMAIL.fullmatch(email):
        raise DomainError(Reason.INVALID_EMAIL, metadata={"field": field_name})
    return email


def normalize_subject_number(raw: str, field_name: str, message: str | None = None) -> str:
    """A project number or USCC/TIN, upper case without surrounding spaces."""
    value = raw.strip().upper()
    if not _SUBJECT_NUMBER.fullmatch(value):
        raise invalid(field_name, message=message)
    return value


def require_tax_authority_code(code: str, field_name: str, message: str | None = None) -> str:
    """A tax authority code: 11 digits."""
    if not _TAX_AUTHORITY_CODE.fullmatch(code):
        raise invalid(field_name, message=message)
    return code


def require_province(province: str, field_name: str = "province") -> str:
    """A mainland province code (GB/T 2260, two digits): each is a provincial bureau (A3)."""
    if province not in MAINLAND_PROVINCES:
        raise invalid(field_name, message="请选择正确的省份")
    return province
