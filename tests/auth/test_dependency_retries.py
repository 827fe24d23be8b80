"""Auth's channels to the services it calls retry only what never reached the server: an
answer such as FACE_SERVICE_BUSY is the called service's decision, made after its own
provider retries, and is not asked again (B7, G2).

Real servers end to end: auth on the channels production opens
(`etax_platform.clients.open_channel`) -> face with its HTTP provider -> a provider on
loopback that answers busy and counts the requests it gets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from pydantic import SecretStr

from etax_platform.clients import open_channel
from etax_platform.clock import ManualClock
from etax_platform.kv import MemoryStore
from etax_platform.server import GrpcHost
from etax_platform.settings import PlatformSettings
from services.auth.app import build as build_auth
from services.face.app import build as build_face
from services.face.settings import FaceSettings
from tests.auth.conftest import auth_settings, failure_of, named, new_resident_id
from tests.harness.provider_server import FakeProvider, fake_provider
from tests.harness.servers import free_port

PROVIDER_KEY = "provider-shared-key-0123456789abcdef"
FACE_ATTEMPTS = 3


@dataclass
class Chain:
    account: auth_pb2_grpc.AccountServiceStub
    provider: FakeProvider


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    clock = ManualClock()
    with fake_provider(PROVIDER_KEY.encode()) as provider:
        face = build_face(
            FaceSettings(
                port=0,
                provider="http",
                provider_url=provider.url,
                provider_key=SecretStr(PROVIDER_KEY),
                provider_attempts=FACE_ATTEMPTS,
                provider_backoff_seconds=0.01,
                provider_backoff_max_seconds=0.02,
                breaker_failures=100,  # the breaker is not what this test is about
                platform=PlatformSettings(data_dir=tmp_path / "face"),
            ),
            clock=clock,
            store=MemoryStore(),
        ).start()
        # Channels as production opens them; SMS and binding are not called here.
        channels = [
            open_channel(face.address),
            open_channel(f"127.0.0.1:{free_port()}"),
            open_channel(f"127.0.0.1:{free_port()}"),
        ]
        auth: GrpcHost | None = None
        try:
            auth = build_auth(
                auth_settings(tmp_path / "auth", f"sqlite:///{tmp_path / 'auth.sqlite3'}"),
                clock=clock,
                store=MemoryStore(),
                face_channel=channels[0],
                sms_channel=channels[1],
                binding_channel=channels[2],
            ).start()
            client = grpc.insecure_channel(auth.address)
            channels.append(client)
            yield Chain(auth_pb2_grpc.AccountServiceStub(client), provider)
        finally:
            if auth is not None:
                auth.stop(grace=0)
            face.stop(grace=0)
            for channel in channels:
                channel.close()


def test_b7_one_busy_answer_costs_only_the_face_adapters_own_attempts(chain: Chain) -> None:
    chain.provider.expect("busy")
    failure = failure_of(
        chain.account.StartRegistration,
        auth_pb2.StartRegistrationRequest(identity=named(new_resident_id()), province="37"),
        timeout=20,
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "FACE_SERVICE_BUSY")
    # Face tried the provider FACE_ATTEMPTS times; auth's channel did not ask face again.
    assert chain.provider.requests == FACE_ATTEMPTS
    assert all(seen.path == "/v1/identity/check" for seen in chain.provider.seen)


def test_the_same_chain_answers_once_the_provider_is_back(chain: Chain) -> None:
    chain.provider.expect("ok", reply={"match": True})
    started = chain.account.StartRegistration(
        auth_pb2.StartRegistrationRequest(identity=named(new_resident_id()), province="37"),
        timeout=20,
    )
    assert started.registration_id
    assert chain.provider.requests == 1
