"""A primary of the Redis Cluster dies under a light load of real SendCode calls (E2, E3).

Callers get UNAVAILABLE while its replica takes over (never INTERNAL, never a sixth code
in a window), and calls succeed again with nothing restarted. The cluster has a replica
per primary and a one-second node timeout, so the takeover comes within a few seconds.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from etax.common.v1 import types_pb2
from etax.sms.v1 import sms_pb2, sms_pb2_grpc

from etax_platform.clock import ManualClock
from etax_platform.errors import from_rpc_error
from etax_platform.kv import RedisStore
from etax_platform.pii import Keyring, PersonalData
from services.sms.app import build
from tests.harness.servers import RedisCluster, redis_cluster
from tests.sms.conftest import sms_settings

pytestmark = pytest.mark.slow

REGISTRATION = types_pb2.VERIFICATION_PURPOSE_REGISTRATION
CALM_TICKS = 10  # ticks in a row without UNAVAILABLE that count as recovered


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    with redis_cluster(primaries=3, replicas_per_primary=1, node_timeout_ms=1000) as cluster:
        yield cluster


def test_e3_a_primary_dying_under_load_gives_unavailable_then_recovers_with_exact_throttles(
    cluster: RedisCluster, tmp_path: Path, keyring: Keyring
) -> None:
    store = RedisStore(cluster.url, prefix="failover:")
    clock = ManualClock()  # one throttle window for the whole test
    host = build(sms_settings(tmp_path, keyring), clock=clock, store=store).start()
    channel = grpc.insecure_channel(host.address)
    stub = sms_pb2_grpc.SmsServiceStub(channel)
    blind = PersonalData(keyring)

    def send(phone: str) -> str:
        try:
            stub.SendCode(sms_pb2.SendCodeRequest(phone=phone, purpose=REGISTRATION), timeout=15)
        except grpc.RpcError as error:
            domain_error = from_rpc_error(error)
            reason = domain_error.reason.value if domain_error else "-"
            return f"{error.code().name}/{reason}"
        return "OK"

    def primary_of(phone: str) -> int:
        index = blind.blind_index(phone, "phone")
        return cluster.primary_of(store._key(f"sms:throttle:phone:{index}"))

    try:
        # Capped phones got their five codes before the load, and the replicas have them.
        capped = [f"1371000{n:04d}" for n in range(6)]
        for phone in capped:
            assert [send(phone) for _ in range(5)] == ["OK"] * 5
        cluster.wait_replicated()
        victim = primary_of(capped[0])
        filling = [f"1372000{n:04d}" for n in range(6)]
        outcomes: dict[str, Counter[str]] = {}
        fresh_numbers = iter(range(10_000))
        calm = 0
        felt = False  # a call was UNAVAILABLE

        def tick(n: int) -> bool:
            """One fresh phone, one phone filling up, one capped phone; True if no call
            was UNAVAILABLE."""
            phones = [
                f"1373{next(fresh_numbers):07d}",
                filling[n % len(filling)],
                capped[n % len(capped)],
            ]
            results = [send(phone) for phone in phones]
            for phone, result in zip(phones, results, strict=True):
                outcomes.setdefault(phone, Counter())[result] += 1
            return not any(r.startswith("UNAVAILABLE") for r in results)

        deadline = time.monotonic() + 60
        n = 0
        while time.monotonic() < deadline:
            if n == 5:
                cluster.kill(victim)  # under load, with the throttles of the capped phones
            if tick(n):
                calm += 1
            else:
                felt, calm = True, 0
            n += 1
            if felt and calm >= CALM_TICKS:
                break
            time.sleep(0.1)  # a light load: about 20 calls a second

        assert felt, "the dead primary was never felt"
        assert calm >= CALM_TICKS, f"no recovery: {outcomes}"
        every = Counter[str]()
        for counter in outcomes.values():
            every.update(counter)
        assert set(every) <= {
            "OK",
            "RESOURCE_EXHAUSTED/SMS_RATE_LIMITED",
            "UNAVAILABLE/PROVIDER_UNAVAILABLE",
        }, every
        for phone in capped:  # never a sixth code in the window (E2)
            assert outcomes[phone]["OK"] == 0, (phone, outcomes[phone])
        for phone in filling:
            assert outcomes[phone]["OK"] <= 5, (phone, outcomes[phone])
        # A replica took over the dead primary's slots; the throttle moved with them.
        cluster.wait_healthy()
        assert primary_of(capped[0]) != victim
        assert send(capped[0]) == "RESOURCE_EXHAUSTED/SMS_RATE_LIMITED"
    finally:
        channel.close()
        host.stop(grace=0)
        store.close()
