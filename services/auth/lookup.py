"""Which person a login account names (C2, C3, D4).

An account is a phone the person holds (any of them, default or not), a document number of
any type `documents.readings` allows, or the username. Usernames are never shaped like a
phone or a fixed-format document (accounts side), so the shape decides:

- phone-shaped: its holder, or PHONE_NOT_FOUND 「手机号码不存在，您可以尝试使用证件号码登录」;
- otherwise the persons registered with any reading of it as a document, or with it as
  username (case-insensitive), in one query; none: USER_NOT_REGISTERED 「该用户未注册」.

Two persons can only match when two free-form foreign documents of different types share a
number; the account is then refused as ambiguous (use a phone or the username).
"""

from __future__ import annotations

from etax_platform.documents import readings
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.identifiers import normalize_phone
from services.auth.domain import parse_username
from services.auth.storage import AccountStore, LoginCandidate

_MAX_ACCOUNT = 64


def _phone(account: str) -> str | None:
    try:
        return normalize_phone(account, "account")
    except DomainError:
        return None


def _username_key(account: str) -> str | None:
    try:
        return parse_username(account, "account").key
    except DomainError:
        return None


class AccountLookup:
    def __init__(self, accounts: AccountStore) -> None:
        self._accounts = accounts

    def resolve(self, account: str, field_name: str = "account") -> LoginCandidate:
        account = account.strip()
        if not account:
            raise invalid(field_name, message="请输入证件号码、手机号码或用户名")
        if len(account) > _MAX_ACCOUNT:
            raise invalid(field_name, message="账号过长")
        phone = _phone(account)
        if phone is not None:
            found = self._accounts.login_candidates(
                document_indexes=[],
                username_key=None,
                phone_index=self._accounts.phone_index(phone),
            )
            if not found:
                raise DomainError(Reason.PHONE_NOT_FOUND, metadata={"field": field_name})
            return found[0]
        indexes = [self._accounts.document_index(document) for document in readings(account)]
        username_key = _username_key(account)
        if not indexes and username_key is None:
            raise DomainError(Reason.USER_NOT_REGISTERED, metadata={"field": field_name})
        found = self._accounts.login_candidates(
            document_indexes=indexes, username_key=username_key, phone_index=None
        )
        if not found:
            raise DomainError(Reason.USER_NOT_REGISTERED, metadata={"field": field_name})
        if len(found) > 1:
            raise invalid(field_name, message="该证件号码对应多个用户，请使用手机号码或用户名登录")
        return found[0]
