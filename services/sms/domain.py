"""One-time codes and their throttle (E2, G1): the rules, without I/O.

Records are plain dataclasses serialised as JSON into the key-value store; every change is
a pure function of (record, now) so the store can retry it under contention.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta

from etax.common.v1 import types_pb2
from etax.sms.v1 import sms_pb2

from etax_platform.clock import to_millis
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.identifiers import normalize_email, normalize_phone
from etax_platform.pii import mask_email, mask_phone

Purpose = types_pb2.VerificationPurpose

# Purposes where the person types the recipient; codes for an account's own phone (login
# step 2, forgot password) are sent by auth through InternalSmsService only.
PUBLIC_PURPOSES = frozenset(
    {
        types_pb2.VERIFICATION_PURPOSE_REGISTRATION,
        types_pb2.VERIFICATION_PURPOSE_PHONE_ADD,
        types_pb2.VERIFICATION_PURPOSE_PHONE_RECOVERY,
    }
)

_PURPOSE_WORDS = {
    types_pb2.VERIFICATION_PURPOSE_REGISTRATION: "用户注册",
    types_pb2.VERIFICATION_PURPOSE_LOGIN: "登录",
    types_pb2.VERIFICATION_PURPOSE_PASSWORD_RESET: "重置密码",
    types_pb2.VERIFICATION_PURPOSE_PHONE_ADD: "添加手机号码",
    types_pb2.VERIFICATION_PURPOSE_PHONE_RECOVERY: "找回手机号码",
    types_pb2.VERIFICATION_PURPOSE_REAL_NAME_UPGRADE: "提升实名等级",
    types_pb2.VERIFICATION_PURPOSE_UNLOCK: "解锁",
    types_pb2.VERIFICATION_PURPOSE_RISKY_OPERATION: "身份验证",
    types_pb2.VERIFICATION_PURPOSE_SPECIFIC_SUBJECT_LOGIN: "特定主体登录",
}

CODE_DIGITS = 6


@dataclass(frozen=True)
class Recipient:
    channel: sms_pb2.Channel
    address: str  # 11-digit phone or lower-case email

    @staticmethod
    def parse(phone: str, email: str) -> Recipient:
        """Exactly one of phone / email, normalised (INVALID_PHONE / INVALID_EMAIL)."""
        if phone and email:
            raise invalid("recipient", message="手机号码与邮箱只能填写一个")
        if email:
            return Recipient(sms_pb2.CHANNEL_EMAIL, normalize_email(email))
        if not phone:
            raise DomainError(Reason.INVALID_PHONE, "请输入手机号码", {"field": "phone"})
        return Recipient(sms_pb2.CHANNEL_SMS, normalize_phone(phone))

    @property
    def masked(self) -> str:
        if self.channel == sms_pb2.CHANNEL_EMAIL:
            return mask_email(self.address)
        return mask_phone(self.address)

    @property
    def index_kind(self) -> str:
        return "email" if self.channel == sms_pb2.CHANNEL_EMAIL else "phone"


def check_purpose(purpose: Purpose, *, public: bool) -> None:
    if purpose not in _PURPOSE_WORDS:
        raise invalid("purpose")
    if public and purpose not in PUBLIC_PURPOSES:
        raise DomainError(
            Reason.PERMISSION_DENIED, "该业务的验证码请在对应页面获取", {"field": "purpose"}
        )


def message_text(code: str, purpose: Purpose, ttl: timedelta) -> str:
    minutes = int(ttl.total_seconds() // 60)
    return (
        f"【电子税务局】您正在办理{_PURPOSE_WORDS[purpose]}业务，验证码为{code}，"
        f"{minutes}分钟内有效。请勿将验证码告知他人。"
    )


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def new_verification_id() -> str:
    return secrets.token_urlsafe(18)


# --- E2: the send window --------------------------------------------------------------


@dataclass(frozen=True)
class SendWindow:
    """The sends of one recipient in the window that began with the first of them."""

    started_ms: int
    sends: int

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @staticmethod
    def decode(raw: bytes | None) -> SendWindow | None:
        return None if raw is None else SendWindow(**json.loads(raw))


@dataclass(frozen=True)
class SendDecision:
    allowed: bool
    window_started_ms: int
    sends_left: int
    retry_after: timedelta


def take_send_slot(
    window: SendWindow | None, now: datetime, limit: int, length: timedelta
) -> tuple[SendWindow, SendDecision]:
    """E2: at most `limit` sends in `length` counted from the first; then a new window."""
    now_ms = to_millis(now)
    length_ms = int(length.total_seconds() * 1000)
    if window is None or now_ms >= window.started_ms + length_ms:
        window = SendWindow(started_ms=now_ms, sends=0)
    if window.sends >= limit:
        retry_after = timedelta(milliseconds=window.started_ms + length_ms - now_ms)
        return window, SendDecision(False, window.started_ms, 0, retry_after)
    taken = replace(window, sends=window.sends + 1)
    return taken, SendDecision(True, window.started_ms, limit - taken.sends, timedelta(0))


def give_back_send_slot(window: SendWindow | None, started_ms: int) -> SendWindow | None:
    """A send the provider failed does not use up a slot (of the window it was taken in)."""
    if window is None or window.started_ms != started_ms or window.sends == 0:
        return window
    return replace(window, sends=window.sends - 1)


def rate_limited(decision: SendDecision) -> DomainError:
    return DomainError(
        Reason.SMS_RATE_LIMITED,
        metadata={"retry_after_seconds": str(int(decision.retry_after.total_seconds()) + 1)},
        retry_after=decision.retry_after,
    )


# --- codes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeRecord:
    """A sent code: its keyed digest, never the code itself."""

    channel: sms_pb2.Channel
    recipient_sealed: str  # the recipient, encrypted
    purpose: Purpose
    digest: str
    sent_ms: int
    expires_ms: int
    attempts_left: int

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @staticmethod
    def decode(raw: bytes | None) -> CodeRecord | None:
        return None if raw is None else CodeRecord(**json.loads(raw))


def wrong_code(attempts_left: int) -> DomainError:
    """A wrong code, with the tries it leaves (none: the code is spent)."""
    if attempts_left <= 0:
        return DomainError(
            Reason.CODE_INVALID, "验证码错误次数过多，请重新获取", {"remaining_attempts": "0"}
        )
    return DomainError(Reason.CODE_INVALID, metadata={"remaining_attempts": str(attempts_left)})


@dataclass(frozen=True)
class Verified:
    record: CodeRecord


def try_code(
    record: CodeRecord | None, now: datetime, purpose: Purpose, presented_digest: str
) -> tuple[CodeRecord | None, Verified | DomainError]:
    """One attempt at a code: (the record afterwards, success or the error to raise).

    Every attempt uses one of the record's tries, whatever its outcome; a correct code
    consumes the record, so it works once even under concurrent attempts.
    """
    if record is None or to_millis(now) >= record.expires_ms or record.attempts_left <= 0:
        return None, DomainError(Reason.CODE_EXPIRED)
    if not hmac.compare_digest(record.digest, presented_digest):
        left = record.attempts_left - 1
        return (replace(record, attempts_left=left) if left else None), wrong_code(left)
    if record.purpose != purpose:
        # The right code for another business: spent, so it cannot be tried again there.
        return None, DomainError(Reason.CODE_PURPOSE_MISMATCH)
    return None, Verified(record)
