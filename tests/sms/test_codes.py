"""SMS and email codes through a real SMS server (E2, G1, B6), on memory and Redis."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import grpc
import pytest
from etax.common.v1 import types_pb2
from etax.sms.v1 import sms_pb2
from prometheus_client import REGISTRY

from etax_platform.clock import ManualClock
from etax_platform.errors import Reason, from_rpc_error
from etax_platform.kv import RedisStore
from tests.harness.servers import free_port
from tests.sms.conftest import SmsClient

PHONE = "13812345678"
REGISTRATION = types_pb2.VERIFICATION_PURPOSE_REGISTRATION
LOGIN = types_pb2.VERIFICATION_PURPOSE_LOGIN
PHONE_ADD = types_pb2.VERIFICATION_PURPOSE_PHONE_ADD


def send(
    sms: SmsClient, phone: str = PHONE, purpose: int = REGISTRATION
) -> sms_pb2.SendCodeResponse:
    return sms.public.SendCode(sms_pb2.SendCodeRequest(phone=phone, purpose=purpose), timeout=5)


def verify(
    sms: SmsClient, verification_id: str, code: str, purpose: int = REGISTRATION
) -> sms_pb2.VerifyCodeResponse:
    return sms.internal.VerifyCode(
        sms_pb2.VerifyCodeRequest(verification_id=verification_id, code=code, purpose=purpose),
        timeout=5,
    )


def reason_of(call: object, *args: object) -> tuple[grpc.StatusCode, Reason]:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args)  # type: ignore[operator]
    error = from_rpc_error(caught.value)
    assert error is not None, caught.value
    return caught.value.code(), error.reason


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_g1_sent_code_proves_the_phone_and_purpose(sms: SmsClient) -> None:
    sent = send(sms)
    assert sent.masked_recipient == "138****5678"
    assert sent.sends_left_in_window == 4
    message = sms.latest(PHONE)
    assert len(message.code) == 6 and message.code.isdigit()
    assert message.code in message.text and "用户注册" in message.text
    proven = verify(sms, sent.verification_id, message.code)
    assert proven.recipient == PHONE
    assert proven.channel == sms_pb2.CHANNEL_SMS
    assert proven.purpose == REGISTRATION


def test_g1_code_works_once(sms: SmsClient) -> None:
    sent = send(sms)
    code = sms.latest(PHONE).code
    verify(sms, sent.verification_id, code)
    assert reason_of(verify, sms, sent.verification_id, code) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.CODE_EXPIRED,
    )


def test_g1_concurrent_verifications_of_one_code_have_one_winner(sms: SmsClient) -> None:
    sent = send(sms)
    code = sms.latest(PHONE).code

    def attempt(_: int) -> bool:
        try:
            verify(sms, sent.verification_id, code)
            return True
        except grpc.RpcError:
            return False

    with ThreadPoolExecutor(20) as pool:
        assert sum(pool.map(attempt, range(20))) == 1


def test_g1_five_wrong_tries_kill_the_code(sms: SmsClient) -> None:
    sent = send(sms)
    code = sms.latest(PHONE).code
    for left in (4, 3, 2, 1, 0):
        with pytest.raises(grpc.RpcError) as caught:
            verify(sms, sent.verification_id, wrong(code))
        error = from_rpc_error(caught.value)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error is not None and error.reason is Reason.CODE_INVALID
        assert error.metadata["remaining_attempts"] == str(left)
    assert reason_of(verify, sms, sent.verification_id, code)[1] is Reason.CODE_EXPIRED


def test_code_checks_are_counted_with_the_channel_of_the_code_they_found(sms: SmsClient) -> None:
    """etax_sms_codes_verified_total: a wrong code and a code of another purpose still
    name the channel of the live code they tried (docs/operations.md)."""

    def counted(purpose: str, outcome: str) -> float:
        labels = {"purpose": purpose, "channel": "sms", "outcome": outcome}
        return REGISTRY.get_sample_value("etax_sms_codes_verified_total", labels) or 0.0

    wrong_before = counted("registration", "CODE_INVALID")
    mismatch_before = counted("login", "CODE_PURPOSE_MISMATCH")
    sent = send(sms)
    code = sms.latest(PHONE).code
    reason_of(verify, sms, sent.verification_id, wrong(code))
    reason_of(verify, sms, sent.verification_id, code, LOGIN)
    assert counted("registration", "CODE_INVALID") == wrong_before + 1
    assert counted("login", "CODE_PURPOSE_MISMATCH") == mismatch_before + 1


def test_g1_code_expires_after_five_minutes_by_the_clock(
    sms: SmsClient, clock: ManualClock
) -> None:
    sent = send(sms)
    code = sms.latest(PHONE).code
    clock.advance(timedelta(minutes=5))
    assert reason_of(verify, sms, sent.verification_id, code)[1] is Reason.CODE_EXPIRED


def test_g1_code_just_before_expiry_still_works(sms: SmsClient, clock: ManualClock) -> None:
    sent = send(sms)
    code = sms.latest(PHONE).code
    clock.advance(timedelta(minutes=4, seconds=59))
    assert verify(sms, sent.verification_id, code).recipient == PHONE


def test_g1_code_for_another_purpose_is_refused_and_spent(sms: SmsClient) -> None:
    sent = send(sms, purpose=PHONE_ADD)
    code = sms.latest(PHONE).code
    assert reason_of(verify, sms, sent.verification_id, code, REGISTRATION)[1] is (
        Reason.CODE_PURPOSE_MISMATCH
    )
    assert reason_of(verify, sms, sent.verification_id, code, PHONE_ADD)[1] is Reason.CODE_EXPIRED


def test_g1_unknown_verification_id_is_expired_not_internal(sms: SmsClient) -> None:
    assert reason_of(verify, sms, "no-such-id", "123456") == (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.CODE_EXPIRED,
    )


@pytest.mark.parametrize("code", ["12345", "1234567", "abcdef", "１２３４５６", ""])
def test_g1_malformed_code_is_invalid_argument(sms: SmsClient, code: str) -> None:
    sent = send(sms)
    status, reason = reason_of(verify, sms, sent.verification_id, code)
    assert (status, reason) == (grpc.StatusCode.INVALID_ARGUMENT, Reason.CODE_INVALID)


def test_e2_sixth_send_in_ten_minutes_is_refused_with_retry_info(
    sms: SmsClient, clock: ManualClock
) -> None:
    for expected_left in (4, 3, 2, 1, 0):
        assert send(sms).sends_left_in_window == expected_left
        clock.advance(timedelta(minutes=1))
    with pytest.raises(grpc.RpcError) as caught:
        send(sms)
    error = from_rpc_error(caught.value)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error is not None and error.reason is Reason.SMS_RATE_LIMITED
    assert error.user_text == "短信验证码获取频繁，请稍后重试"
    # The window began with the first send, 5 minutes ago: 5 minutes remain.
    assert error.retry_after == timedelta(minutes=5)


def test_e2_window_counts_from_the_first_send_then_five_more(
    sms: SmsClient, clock: ManualClock
) -> None:
    send(sms)
    clock.advance(timedelta(minutes=9))
    for _ in range(4):
        send(sms)
    assert reason_of(send, sms)[1] is Reason.SMS_RATE_LIMITED
    clock.advance(timedelta(minutes=1))  # 10 minutes after the first send
    for expected_left in (4, 3, 2, 1, 0):
        assert send(sms).sends_left_in_window == expected_left
    assert reason_of(send, sms)[1] is Reason.SMS_RATE_LIMITED


def test_e2_refused_sends_do_not_extend_the_window(sms: SmsClient, clock: ManualClock) -> None:
    for _ in range(5):
        send(sms)
    for _ in range(3):
        clock.advance(timedelta(minutes=3))
        assert reason_of(send, sms)[1] is Reason.SMS_RATE_LIMITED
    clock.advance(timedelta(minutes=1))
    assert send(sms).sends_left_in_window == 4


def test_e2_throttle_is_per_phone_and_ignores_the_prefix(sms: SmsClient) -> None:
    for phone in (PHONE, "+8613812345678", "86 138-1234-5678", PHONE, PHONE):
        send(sms, phone=phone)
    assert reason_of(send, sms, "+86 13812345678")[1] is Reason.SMS_RATE_LIMITED
    assert send(sms, phone="13912345678").sends_left_in_window == 4


def test_e2_throttle_counts_every_purpose(sms: SmsClient) -> None:
    for purpose in (REGISTRATION, PHONE_ADD, REGISTRATION, PHONE_ADD, REGISTRATION):
        send(sms, purpose=purpose)
    assert reason_of(send, sms, PHONE, PHONE_ADD)[1] is Reason.SMS_RATE_LIMITED


def test_e3_fifty_concurrent_sends_admit_exactly_five(sms: SmsClient) -> None:
    def attempt(_: int) -> grpc.StatusCode:
        try:
            send(sms)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(attempt, range(50)))
    assert outcomes.count(grpc.StatusCode.OK) == 5
    assert outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 45


@pytest.mark.parametrize(
    "phone", ["1381234567", "138123456789", "12812345678", "+1 2025550123", "phone", ""]
)
def test_invalid_phone_is_refused(sms: SmsClient, phone: str) -> None:
    status, reason = reason_of(send, sms, phone)
    assert (status, reason) == (grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_PHONE)


def test_public_send_refuses_account_purposes(sms: SmsClient) -> None:
    """Login and password-reset codes go to the account's own phone, chosen by auth."""
    status, reason = reason_of(send, sms, PHONE, LOGIN)
    assert (status, reason) == (grpc.StatusCode.PERMISSION_DENIED, Reason.PERMISSION_DENIED)
    sent = sms.internal.SendAccountCode(
        sms_pb2.SendAccountCodeRequest(phone=PHONE, purpose=LOGIN), timeout=5
    )
    assert verify(sms, sent.verification_id, sms.latest(PHONE).code, LOGIN).purpose == LOGIN


def test_missing_purpose_is_invalid_argument(sms: SmsClient) -> None:
    status, reason = reason_of(send, sms, PHONE, 0)
    assert (status, reason) == (grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT)


def test_b6_email_codes_use_the_same_mechanics(sms: SmsClient) -> None:
    def send_email(address: str) -> sms_pb2.SendCodeResponse:
        return sms.public.SendCode(
            sms_pb2.SendCodeRequest(email=address, purpose=REGISTRATION), timeout=5
        )

    sent = send_email("John.Smith@Example.COM")
    assert sent.masked_recipient == "j***@example.com"
    message = sms.latest("john.smith@example.com")
    assert message.channel == sms_pb2.CHANNEL_EMAIL
    proven = verify(sms, sent.verification_id, message.code)
    assert (proven.channel, proven.recipient) == (sms_pb2.CHANNEL_EMAIL, "john.smith@example.com")
    for _ in range(4):
        send_email("john.smith@example.com")
    assert reason_of(send_email, "JOHN.SMITH@example.com")[1] is Reason.SMS_RATE_LIMITED
    assert reason_of(send_email, "not-an-email")[1] is Reason.INVALID_EMAIL


def test_store_down_is_unavailable_and_nothing_is_sent(start_sms: object) -> None:
    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    sms = start_sms(store=dead)  # type: ignore[operator]
    status, reason = reason_of(send, sms)
    assert (status, reason) == (grpc.StatusCode.UNAVAILABLE, Reason.PROVIDER_UNAVAILABLE)
