"""The SMS service as `make run` starts it: real processes, and two replicas on one Redis (E3)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from etax.common.v1 import types_pb2
from etax.sms.v1 import sms_pb2, sms_pb2_grpc

from etax_platform.pii import Keyring
from tests.harness.grpc_checks import reflected_services
from tests.harness.processes import ServiceProcess

pytestmark = pytest.mark.slow
PHONE = "13700001111"


def _env(tmp_path: Path, keyring: Keyring, redis_url: str, replica: int) -> dict[str, str]:
    keys = keyring.dump()
    return {
        "ETAX_KV_PREFIX": f"{tmp_path.name}:",
        "ETAX_DATA_DIR": str(tmp_path / f"replica{replica}"),
        "ETAX_KV_URL": redis_url,
        "ETAX_PII_KEYS": keys["keys"],
        "ETAX_PII_ACTIVE_KEY_ID": keys["active_key_id"],
        "ETAX_PII_INDEX_KEY": keys["index_key"],
        "ETAX_SMS_OUTBOX_ENABLED": "true",
        "ETAX_LOG_LEVEL": "DEBUG",
    }


@pytest.fixture
def replicas(tmp_path: Path, keyring: Keyring, redis_url: str) -> Iterator[list[ServiceProcess]]:
    started = [
        ServiceProcess("sms", _env(tmp_path, keyring, redis_url, n), tmp_path / f"sms{n}.log")
        for n in (1, 2)
    ]
    try:
        for process in started:
            process.wait_serving("etax.sms.v1.SmsService")
        yield started
    finally:
        for process in started:
            process.terminate()


def test_e3_two_replicas_on_one_redis_admit_exactly_five_of_fifty(
    replicas: list[ServiceProcess],
) -> None:
    channels = [grpc.insecure_channel(p.address) for p in replicas]
    stubs = [sms_pb2_grpc.SmsServiceStub(c) for c in channels]
    request = sms_pb2.SendCodeRequest(
        phone=PHONE, purpose=types_pb2.VERIFICATION_PURPOSE_REGISTRATION
    )

    def attempt(n: int) -> grpc.StatusCode:
        try:
            stubs[n % 2].SendCode(request, timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(attempt, range(50)))
    for channel in channels:
        channel.close()
    assert outcomes.count(grpc.StatusCode.OK) == 5
    assert outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 45


def test_e3_a_code_sent_by_one_replica_is_verified_by_the_other(
    replicas: list[ServiceProcess],
) -> None:
    first, second = (grpc.insecure_channel(p.address) for p in replicas)
    purpose = types_pb2.VERIFICATION_PURPOSE_PHONE_ADD
    sent = sms_pb2_grpc.SmsServiceStub(first).SendCode(
        sms_pb2.SendCodeRequest(phone=PHONE, purpose=purpose), timeout=5
    )
    (message, *_) = (
        sms_pb2_grpc.SmsOutboxServiceStub(second)
        .ListMessages(sms_pb2.ListMessagesRequest(recipient=PHONE), timeout=5)
        .messages
    )
    proven = sms_pb2_grpc.InternalSmsServiceStub(second).VerifyCode(
        sms_pb2.VerifyCodeRequest(
            verification_id=sent.verification_id, code=message.code, purpose=purpose
        ),
        timeout=5,
    )
    assert proven.recipient == PHONE
    first.close()
    second.close()


def test_process_serves_reflection_and_stops_cleanly_on_sigterm(
    replicas: list[ServiceProcess],
) -> None:
    process = replicas[0]
    with grpc.insecure_channel(process.address) as channel:
        names = reflected_services(channel)
        sms_pb2_grpc.SmsServiceStub(channel).SendCode(
            sms_pb2.SendCodeRequest(
                phone=PHONE, purpose=types_pb2.VERIFICATION_PURPOSE_REGISTRATION
            ),
            timeout=5,
        )
    assert {"etax.sms.v1.SmsService", "etax.sms.v1.InternalSmsService"} <= names
    assert process.terminate() == 0
    log = process.log()
    assert "shutting down" in log
    assert PHONE not in log, "the log shows an unmasked phone number"
    assert "137****1111" in log
