"""Security state survives a crash of Redis (DESIGN.md, Storage and state; issue 11):
an E1 lock, an E2 throttle window and a logout's revocation, written through the real
RPCs of auth and sms, still hold after Redis is SIGKILLed and started again on the same
port and data directory.

Redis runs as production does: `--appendonly yes --appendfsync everysec`. The test waits
1.5 s after the last write before the kill, past the one second within which everysec
fsyncs (a kill -9 alone loses nothing Redis has written to the kernel; a machine failure
could lose up to that second: docs/durability.md).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from etax.auth.v1 import auth_pb2
from etax.sms.v1 import sms_pb2, sms_pb2_grpc

from etax_platform.kv import KeyValueStore, RedisStore
from etax_platform.server import GrpcHost
from etax_platform.settings import PlatformSettings
from services.sms.app import build as build_sms
from services.sms.settings import SmsSettings
from tests.auth.conftest import Backend, failure_of, new_phone
from tests.auth.platform import Platform, bearer, start_platform
from tests.harness.servers import PostgresServer, RedisServer, restartable_redis

pytestmark = pytest.mark.slow

WRONG = "Wrong.pass1"
REGISTRATION = 1  # VERIFICATION_PURPOSE_REGISTRATION
# Past everysec's one second: what Redis acknowledged is on disk.
AFTER_EVERYSEC = 1.5


@dataclass
class Durable:
    platform: Platform
    redis: RedisServer
    # An SMS service with the real E2 policy (the platform's own is unthrottled).
    sms: sms_pb2_grpc.SmsServiceStub

    def crash_redis(self) -> None:
        time.sleep(AFTER_EVERYSEC)
        self.redis.kill()
        self.redis.start()


@pytest.fixture
def durable(postgres: PostgresServer, tmp_path: Path) -> Iterator[Durable]:
    opened: list[KeyValueStore] = []
    databases: list[str] = []
    with restartable_redis() as redis:

        def new_store() -> KeyValueStore:
            opened.append(RedisStore(redis.url, prefix=f"t{uuid.uuid4().hex}:"))
            return opened[-1]

        def same_store(store: KeyValueStore) -> KeyValueStore:
            assert isinstance(store, RedisStore)
            opened.append(RedisStore(redis.url, prefix=store._prefix))
            return opened[-1]

        def new_database(_name: str = "") -> str:
            databases.append(postgres.create_database())
            return postgres.url(databases[-1])

        backend = Backend(new_database(), new_store, new_database, same_store)
        sms_host: GrpcHost | None = None
        channel: grpc.Channel | None = None
        try:
            with start_platform(backend, tmp_path) as platform:
                sms_host = build_sms(
                    SmsSettings(
                        port=0,
                        database_url=new_database(),
                        platform=PlatformSettings(data_dir=tmp_path / "sms-e2"),
                    ),
                    clock=platform.clock,
                    store=new_store(),
                ).start()
                channel = grpc.insecure_channel(sms_host.address)
                yield Durable(platform, redis, sms_pb2_grpc.SmsServiceStub(channel))
        finally:
            if channel is not None:
                channel.close()
            if sms_host is not None:
                sms_host.stop(grace=0)
            for store in opened:
                store.close()
            with postgres.admin() as connection:
                for name in databases:
                    connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_e1_lock_and_e2_throttle_survive_a_redis_sigkill_and_restart(durable: Durable) -> None:
    platform = durable.platform
    locked, bystander = platform.person(), platform.person()
    # E1: five wrong passwords lock the password level.
    for _ in range(4):
        assert failure_of(platform.start, locked.document, WRONG).reason == "CREDENTIALS_INVALID"
    assert failure_of(platform.start, locked.document, WRONG).reason == "AUTH_METHOD_LOCKED"
    # E2: five codes to a phone in ten minutes, the sixth refused.
    phone = new_phone()
    send = sms_pb2.SendCodeRequest(phone=phone, purpose=REGISTRATION)  # type: ignore[arg-type]
    for _ in range(5):
        durable.sms.SendCode(send, timeout=10)
    assert failure_of(durable.sms.SendCode, send, timeout=10).reason == "SMS_RATE_LIMITED"

    durable.crash_redis()

    # The right password is still refused, and the phone still gets no code...
    still = failure_of(platform.start, locked.document)
    assert (still.code, still.reason) == (grpc.StatusCode.PERMISSION_DENIED, "AUTH_METHOD_LOCKED")
    refused = failure_of(durable.sms.SendCode, send, timeout=10)
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SMS_RATE_LIMITED",
    )
    # ... while the restarted store serves everyone else.
    assert platform.login(bystander).person_id == bystander.person_id
    other = sms_pb2.SendCodeRequest(phone=new_phone(), purpose=REGISTRATION)  # type: ignore[arg-type]
    assert durable.sms.SendCode(other, timeout=10).verification_id


def test_a_logged_out_access_token_stays_refused_after_a_redis_sigkill_and_restart(
    durable: Durable,
) -> None:
    platform = durable.platform
    person = platform.person()
    session = platform.login(person)
    profile = auth_pb2.GetProfileRequest()
    assert platform.accounts.account.GetProfile(profile, metadata=bearer(session), timeout=10)
    platform.auth.Logout(auth_pb2.LogoutRequest(), metadata=bearer(session), timeout=10)
    call = platform.accounts.account.GetProfile
    assert failure_of(call, profile, metadata=bearer(session), timeout=10).reason == (
        "UNAUTHENTICATED"
    )

    durable.crash_redis()

    after = failure_of(call, profile, metadata=bearer(session), timeout=10)
    assert (after.code, after.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


def test_logout_during_a_redis_outage_is_all_or_nothing(durable: Durable) -> None:
    """Issue 11.8: a logout while Redis is away revoked the session in PostgreSQL and then
    answered UNAVAILABLE. Revocation needs no Redis now: the logout succeeds, the token is
    refused, and after Redis is back it stays refused."""
    platform = durable.platform
    session = platform.login(platform.person())
    profile = auth_pb2.GetProfileRequest()
    call = platform.accounts.account.GetProfile
    durable.redis.kill()
    try:
        platform.auth.Logout(auth_pb2.LogoutRequest(), metadata=bearer(session), timeout=10)
        refused = failure_of(call, profile, metadata=bearer(session), timeout=10)
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "UNAUTHENTICATED",
        )
    finally:
        durable.redis.start()
    refused = failure_of(call, profile, metadata=bearer(session), timeout=10)
    assert refused.reason == "UNAUTHENTICATED"
