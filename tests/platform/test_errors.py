"""The one reason table (DESIGN.md "Errors") and its agreement with the contract."""

from __future__ import annotations

import grpc
import pytest
from etax.common.v1 import errors_pb2

from etax_platform.errors import MEANINGS, DomainError, Reason

PREFIX = "ERROR_REASON_"


def test_python_reasons_are_exactly_the_contract_reasons() -> None:
    names = {v.name.removeprefix(PREFIX) for v in errors_pb2.ErrorReason.DESCRIPTOR.values}
    assert names - {"UNSPECIFIED"} == {r.value for r in Reason}


def test_every_reason_has_a_status_and_a_chinese_text() -> None:
    assert set(MEANINGS) == set(Reason)
    for meaning in MEANINGS.values():
        assert meaning.code not in (grpc.StatusCode.OK, grpc.StatusCode.INTERNAL)
        assert any("\u4e00" <= ch <= "\u9fff" for ch in meaning.text)


@pytest.mark.parametrize(
    ("reason", "code", "text"),
    [
        # D4
        (Reason.USER_NOT_REGISTERED, grpc.StatusCode.NOT_FOUND, "该用户未注册"),
        (
            Reason.PHONE_NOT_FOUND,
            grpc.StatusCode.NOT_FOUND,
            "手机号码不存在，您可以尝试使用证件号码登录",
        ),
        (Reason.PHONE_EMPTY, grpc.StatusCode.FAILED_PRECONDITION, "手机号码为空，请使用扫码验证"),
        # B5
        (
            Reason.OFFLINE_REAL_NAME_REQUIRED,
            grpc.StatusCode.FAILED_PRECONDITION,
            "未查询到您的手机号码，请稍后重试或携带相关证件前往办税大厅办理",
        ),
        # C1
        (
            Reason.PASSWORD_POLICY,
            grpc.StatusCode.INVALID_ARGUMENT,
            "密码长度为8-16个字符，必须包含数字、字母（区分大小写）、特殊字符三者中至少两种",
        ),
        # E2
        (
            Reason.SMS_RATE_LIMITED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "短信验证码获取频繁，请稍后重试",
        ),
        # B7
        (Reason.FACE_SERVICE_BUSY, grpc.StatusCode.UNAVAILABLE, "实名核验服务繁忙，请稍后重试"),
        # D5, F3
        (
            Reason.RELATION_NOT_FOUND,
            grpc.StatusCode.PERMISSION_DENIED,
            "未查询到您与该企业的关联关系信息，请确认录入的信息是否正确",
        ),
    ],
)
def test_design_table_codes_and_verbatim_texts(
    reason: Reason, code: grpc.StatusCode, text: str
) -> None:
    error = DomainError(reason)
    assert (error.code, error.user_text) == (code, text)


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        # DESIGN.md: a failed login attempt is 400; 401 means only "your token".
        (Reason.CREDENTIALS_INVALID, grpc.StatusCode.INVALID_ARGUMENT),
        (Reason.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED),
        (Reason.MALFORMED_REQUEST, grpc.StatusCode.INVALID_ARGUMENT),
        (Reason.AUTH_METHOD_LOCKED, grpc.StatusCode.PERMISSION_DENIED),
        (Reason.CODE_INVALID, grpc.StatusCode.INVALID_ARGUMENT),
        (Reason.CODE_EXPIRED, grpc.StatusCode.FAILED_PRECONDITION),
        (Reason.FACE_RETRY, grpc.StatusCode.FAILED_PRECONDITION),
        (Reason.NOT_AUTHORIZED_TO_CONFIRM, grpc.StatusCode.PERMISSION_DENIED),
        (Reason.USERNAME_CHANGE_TOO_SOON, grpc.StatusCode.FAILED_PRECONDITION),
        (Reason.REAL_NAME_LEVEL_TOO_LOW, grpc.StatusCode.PERMISSION_DENIED),
        (Reason.OVERSEAS_RESTRICTED, grpc.StatusCode.PERMISSION_DENIED),
        (Reason.LEGACY_LOGIN_CLOSED, grpc.StatusCode.FAILED_PRECONDITION),
        (Reason.INVALID_DOCUMENT, grpc.StatusCode.INVALID_ARGUMENT),
        (Reason.INVALID_PHONE, grpc.StatusCode.INVALID_ARGUMENT),
        (Reason.INVALID_ENTERPRISE_CODE, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_design_table_status_codes(reason: Reason, code: grpc.StatusCode) -> None:
    assert DomainError(reason).code == code


def test_a_message_overrides_the_default_text_only() -> None:
    error = DomainError(
        Reason.CREDENTIALS_INVALID, "密码错误，您还可以尝试4次", {"remaining_attempts": "4"}
    )
    assert error.user_text == "密码错误，您还可以尝试4次"
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
