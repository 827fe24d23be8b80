"""Domain errors and their one mapping to gRPC status (DESIGN.md, "Errors").

Domain code raises `DomainError(Reason.X, ...)`; the server interceptor turns it into a
status with `google.rpc.ErrorInfo` (domain "etax", the reason, metadata),
`google.rpc.LocalizedMessage` (zh-CN user text) and, for throttling, `RetryInfo`.
A client-side helper turns such a status back into the same `DomainError`, so a reason
raised by one service reaches the end user unchanged through another.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "etax"
LOCALE = "zh-CN"
Code = grpc.StatusCode


class Reason(enum.StrEnum):
    """Values of etax.common.v1.ErrorReason without the ERROR_REASON_ prefix."""

    USER_NOT_REGISTERED = "USER_NOT_REGISTERED"
    PHONE_NOT_FOUND = "PHONE_NOT_FOUND"
    PHONE_EMPTY = "PHONE_EMPTY"
    OFFLINE_REAL_NAME_REQUIRED = "OFFLINE_REAL_NAME_REQUIRED"
    PASSWORD_POLICY = "PASSWORD_POLICY"
    CREDENTIALS_INVALID = "CREDENTIALS_INVALID"
    AUTH_METHOD_LOCKED = "AUTH_METHOD_LOCKED"
    SMS_RATE_LIMITED = "SMS_RATE_LIMITED"
    CODE_INVALID = "CODE_INVALID"
    CODE_EXPIRED = "CODE_EXPIRED"
    FACE_RETRY = "FACE_RETRY"
    FACE_SERVICE_BUSY = "FACE_SERVICE_BUSY"
    RELATION_NOT_FOUND = "RELATION_NOT_FOUND"
    NOT_AUTHORIZED_TO_CONFIRM = "NOT_AUTHORIZED_TO_CONFIRM"
    USERNAME_CHANGE_TOO_SOON = "USERNAME_CHANGE_TOO_SOON"
    REAL_NAME_LEVEL_TOO_LOW = "REAL_NAME_LEVEL_TOO_LOW"
    OVERSEAS_RESTRICTED = "OVERSEAS_RESTRICTED"
    LEGACY_LOGIN_CLOSED = "LEGACY_LOGIN_CLOSED"
    INVALID_DOCUMENT = "INVALID_DOCUMENT"
    INVALID_PHONE = "INVALID_PHONE"
    INVALID_ENTERPRISE_CODE = "INVALID_ENTERPRISE_CODE"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    INVALID_EMAIL = "INVALID_EMAIL"
    CODE_PURPOSE_MISMATCH = "CODE_PURPOSE_MISMATCH"
    PROVIDER_UNAVAILABLE = "PROVIDER_UNAVAILABLE"
    IDENTITY_MISMATCH = "IDENTITY_MISMATCH"
    ALREADY_REGISTERED = "ALREADY_REGISTERED"
    USERNAME_TAKEN = "USERNAME_TAKEN"
    FACE_MISMATCH = "FACE_MISMATCH"
    FACE_GO_TO_HALL = "FACE_GO_TO_HALL"
    TICKET_INVALID = "TICKET_INVALID"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    STATE_CONFLICT = "STATE_CONFLICT"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"


@dataclass(frozen=True)
class _Meaning:
    code: grpc.StatusCode
    text: str


# The one table: status code and default zh-CN user text per reason.
MEANINGS: Mapping[Reason, _Meaning] = {
    Reason.USER_NOT_REGISTERED: _Meaning(Code.NOT_FOUND, "该用户未注册"),
    Reason.PHONE_NOT_FOUND: _Meaning(Code.NOT_FOUND, "手机号码不存在，您可以尝试使用证件号码登录"),
    Reason.PHONE_EMPTY: _Meaning(Code.FAILED_PRECONDITION, "手机号码为空，请使用扫码验证"),
    Reason.OFFLINE_REAL_NAME_REQUIRED: _Meaning(
        Code.FAILED_PRECONDITION,
        "未查询到您的手机号码，请稍后重试或携带相关证件前往办税大厅办理",
    ),
    Reason.PASSWORD_POLICY: _Meaning(
        Code.INVALID_ARGUMENT,
        "密码长度为8-16个字符，必须包含数字、字母（区分大小写）、特殊字符三者中至少两种",
    ),
    # A failed login attempt is a bad argument (HTTP 400, as OAuth's invalid_grant):
    # UNAUTHENTICATED (401) means only "your token" (DESIGN.md, Errors).
    Reason.CREDENTIALS_INVALID: _Meaning(Code.INVALID_ARGUMENT, "账号或密码错误"),
    Reason.AUTH_METHOD_LOCKED: _Meaning(
        Code.PERMISSION_DENIED,
        "认证失败次数过多，该认证方式已锁定，请通过忘记密码或刷脸认证解锁，或次日零时自动解锁",
    ),
    Reason.SMS_RATE_LIMITED: _Meaning(Code.RESOURCE_EXHAUSTED, "短信验证码获取频繁，请稍后重试"),
    Reason.CODE_INVALID: _Meaning(Code.INVALID_ARGUMENT, "验证码错误"),
    Reason.CODE_EXPIRED: _Meaning(Code.FAILED_PRECONDITION, "验证码已失效，请重新获取"),
    Reason.FACE_RETRY: _Meaning(
        Code.FAILED_PRECONDITION, "未能清晰拍摄人脸图像，请按提示调整后重试"
    ),
    Reason.FACE_SERVICE_BUSY: _Meaning(Code.UNAVAILABLE, "实名核验服务繁忙，请稍后重试"),
    Reason.RELATION_NOT_FOUND: _Meaning(
        Code.PERMISSION_DENIED,
        "未查询到您与该企业的关联关系信息，请确认录入的信息是否正确",
    ),
    Reason.NOT_AUTHORIZED_TO_CONFIRM: _Meaning(
        Code.PERMISSION_DENIED, "仅企业法定代表人或财务负责人可以办理此业务"
    ),
    Reason.USERNAME_CHANGE_TOO_SOON: _Meaning(Code.FAILED_PRECONDITION, "用户名一年度只能修改一次"),
    Reason.REAL_NAME_LEVEL_TOO_LOW: _Meaning(
        Code.PERMISSION_DENIED, "您的实名等级不足，请使用税务APP扫脸认证提升实名等级"
    ),
    Reason.OVERSEAS_RESTRICTED: _Meaning(
        Code.PERMISSION_DENIED,
        "境外自然人权限受限，如需办理企业业务，请前往办税服务场所采集实名信息",
    ),
    Reason.LEGACY_LOGIN_CLOSED: _Meaning(
        Code.FAILED_PRECONDITION, "旧版登录方式已关闭，请使用新版登录"
    ),
    Reason.INVALID_DOCUMENT: _Meaning(Code.INVALID_ARGUMENT, "证件类型或证件号码不正确"),
    Reason.INVALID_PHONE: _Meaning(Code.INVALID_ARGUMENT, "手机号码格式不正确"),
    Reason.INVALID_ENTERPRISE_CODE: _Meaning(
        Code.INVALID_ARGUMENT, "统一社会信用代码或纳税人识别号不正确"
    ),
    Reason.INVALID_ARGUMENT: _Meaning(Code.INVALID_ARGUMENT, "输入的信息不正确"),
    Reason.INVALID_EMAIL: _Meaning(Code.INVALID_ARGUMENT, "邮箱地址格式不正确"),
    Reason.CODE_PURPOSE_MISMATCH: _Meaning(
        Code.FAILED_PRECONDITION, "验证码不适用于当前业务，请重新获取"
    ),
    Reason.PROVIDER_UNAVAILABLE: _Meaning(Code.UNAVAILABLE, "服务暂时不可用，请稍后重试"),
    Reason.IDENTITY_MISMATCH: _Meaning(
        Code.FAILED_PRECONDITION, "身份信息校验未通过，请确认姓名与证件号码"
    ),
    Reason.ALREADY_REGISTERED: _Meaning(Code.ALREADY_EXISTS, "该证件已注册，请直接登录"),
    Reason.USERNAME_TAKEN: _Meaning(Code.ALREADY_EXISTS, "该用户名已被使用"),
    Reason.FACE_MISMATCH: _Meaning(Code.FAILED_PRECONDITION, "人脸识别未通过，请本人重试"),
    Reason.FACE_GO_TO_HALL: _Meaning(
        Code.FAILED_PRECONDITION, "无法完成实名核验，请前往办税服务大厅线下进行实名信息采集"
    ),
    Reason.TICKET_INVALID: _Meaning(
        Code.FAILED_PRECONDITION, "二维码或验证信息已失效，请刷新后重试"
    ),
    Reason.UNAUTHENTICATED: _Meaning(Code.UNAUTHENTICATED, "登录已失效，请重新登录"),
    Reason.PERMISSION_DENIED: _Meaning(Code.PERMISSION_DENIED, "您无权办理此业务"),
    Reason.NOT_FOUND: _Meaning(Code.NOT_FOUND, "未查询到相关信息"),
    Reason.STATE_CONFLICT: _Meaning(Code.FAILED_PRECONDITION, "当前状态不允许此操作"),
    Reason.MALFORMED_REQUEST: _Meaning(Code.INVALID_ARGUMENT, "请求格式不正确"),
    Reason.TOO_MANY_REQUESTS: _Meaning(Code.RESOURCE_EXHAUSTED, "当前访问人数较多，请稍后重试"),
}


@dataclass
class DomainError(Exception):
    """A failure the user or caller should see, with a stable reason.

    `message` overrides the default user text; `metadata` must never carry an unmasked
    personal number; `retry_after` adds RetryInfo.
    """

    reason: Reason
    message: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    retry_after: timedelta | None = None

    def __post_init__(self) -> None:
        super().__init__(self.reason.value)

    @property
    def code(self) -> grpc.StatusCode:
        return MEANINGS[self.reason].code

    @property
    def user_text(self) -> str:
        return self.message or MEANINGS[self.reason].text

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.user_text}"


def invalid(
    field_name: str, reason: Reason = Reason.INVALID_ARGUMENT, message: str | None = None
) -> DomainError:
    """A bad-input error naming the offending field."""
    return DomainError(reason, message, {"field": field_name})


def to_status(error: DomainError) -> grpc.Status:
    """The status a servicer returns for a domain error; its message is the user text, so a
    client that reads no details still shows something true."""
    details = [
        error_details_pb2.ErrorInfo(
            reason=error.reason.value, domain=ERROR_DOMAIN, metadata=dict(error.metadata)
        ),
        error_details_pb2.LocalizedMessage(locale=LOCALE, message=error.user_text),
    ]
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(max(error.retry_after, timedelta(0)))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    status = status_pb2.Status(code=error.code.value[0], message=error.user_text, details=packed)
    return rpc_status.to_status(status)


def internal_status() -> grpc.Status:
    """What a caller sees for a bug: nothing about it but that it happened."""
    status = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
    return rpc_status.to_status(status)


def from_rpc_error(error: grpc.RpcError) -> DomainError | None:
    """The domain error another etax service returned, or None if it was not one."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    info: error_details_pb2.ErrorInfo | None = None
    message: str | None = None
    retry_after: timedelta | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.LocalizedMessage.DESCRIPTOR):
            localized = error_details_pb2.LocalizedMessage()
            detail.Unpack(localized)
            message = localized.message
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToTimedelta()
    if info is None or info.domain != ERROR_DOMAIN or info.reason not in Reason.__members__:
        return None
    return DomainError(Reason(info.reason), message, dict(info.metadata), retry_after)
