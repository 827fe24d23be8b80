"""The four services in-process on port 0, one shared ManualClock, and the real Envoy in
front of them: the platform as its users reach it.

The clock starts at the real current time and only moves forward: Envoy checks access
tokens' expiry against the real clock, the services against this one.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt

from etax_platform.certs import CertificatePaths
from etax_platform.clock import CST, ManualClock
from etax_platform.kv import KeyValueStore, MemoryStore, RedisStore
from etax_platform.server import GrpcHost
from etax_platform.settings import PlatformSettings
from etax_platform.tokens import SigningKey
from services.auth.app import build as build_auth
from services.auth.settings import AuthSettings
from services.binding.app import build as build_binding
from services.binding.settings import BindingSettings
from services.face.app import build as build_face
from services.face.settings import FaceSettings
from services.sms.app import build as build_sms
from services.sms.settings import SmsSettings
from tests.harness.gateway import RunningGateway, running_gateway
from tests.harness.servers import PostgresServer, free_port

# Q17: the personal income tax APP (个人所得税 APP), a token issuer auth trusts for QR login.
IIT_ISSUER = "https://iit.chinatax.example/app"
# D7: the old login's transition period, from the platform's start.
LEGACY_LOGIN_PERIOD = timedelta(days=30)


@dataclass(frozen=True)
class Backend:
    """Where the services keep their state: a database URL and a store per service."""

    name: str
    database_url: Callable[[str], str]
    new_store: Callable[[], KeyValueStore]


def sqlite_memory(directory: Path) -> Backend:
    return Backend(
        "sqlite+memory", lambda service: f"sqlite:///{directory / service}.sqlite3", MemoryStore
    )


def postgresql_redis(postgres: PostgresServer, redis_url: str) -> Backend:
    return Backend(
        "postgresql+redis",
        lambda _service: postgres.url(postgres.create_database()),
        lambda: RedisStore(redis_url, prefix=f"e2e{uuid.uuid4().hex}:"),
    )


@dataclass
class Platform:
    clock: ManualClock
    backend: Backend
    certificates: CertificatePaths
    workdir: Path
    hosts: dict[str, GrpcHost]
    # D7: when the old login closes.
    legacy_login_closes_at: datetime
    # The personal income tax APP's signing key (auth trusts its tokens, Q17).
    iit_key: SigningKey

    def iit_token(self, document_type: int, document_number: str) -> str:
        """An access token of the personal income tax APP, naming the person by document."""
        expires = max(self.clock.now(), datetime.now(CST)) + timedelta(minutes=10)
        return jwt.encode(
            {
                "iss": IIT_ISSUER,
                "aud": "etax",
                "sub": f"iit-{document_number[-6:]}",
                "exp": int(expires.timestamp()),
                "document_type": document_type,
                "document_number": document_number,
            },
            self.iit_key.private_key,
            "EdDSA",
            headers={"kid": self.iit_key.kid},
        )

    @property
    def upstreams(self) -> dict[str, str]:
        return {name: host.address for name, host in self.hosts.items()}

    @contextlib.contextmanager
    def gateway(self, province: str, **overrides: Any) -> Iterator[RunningGateway]:
        """A bureau's Envoy in front of these services, ready to route to all of them."""
        workdir = self.workdir / f"gateway-{province}-{uuid.uuid4().hex[:6]}"
        # Q17: the gateway, like auth, trusts the personal income tax APP's sessions.
        iit_jwks = self.workdir / "iit-jwks.json"
        iit_jwks.write_text(json.dumps({"keys": [self.iit_key.public_jwk()]}))
        with running_gateway(
            self.upstreams,
            workdir=workdir,
            certificates=self.certificates,
            province=province,
            iit_issuer=IIT_ISSUER,
            iit_jwks_file=iit_jwks,
            **overrides,
        ) as gateway:
            gateway.wait_healthy(*self.hosts)
            gateway.wait_for_jwks()
            yield gateway


def _platform_settings(directory: Path) -> PlatformSettings:
    return PlatformSettings(data_dir=directory)


@contextlib.contextmanager
def running_platform(
    backend: Backend, certificates: CertificatePaths, workdir: Path
) -> Iterator[Platform]:
    clock = ManualClock(datetime.now(CST))
    started: list[GrpcHost] = []
    channels: list[grpc.Channel] = []
    stores: list[KeyValueStore] = []

    def new_store() -> KeyValueStore:
        stores.append(backend.new_store())
        return stores[-1]

    def channel_to(address: str) -> grpc.Channel:
        channels.append(grpc.insecure_channel(address))
        return channels[-1]

    try:
        sms = build_sms(
            SmsSettings(
                port=0,
                database_url=backend.database_url("sms"),
                outbox_enabled=True,
                platform=_platform_settings(workdir / "sms"),
            ),
            clock=clock,
            store=new_store(),
        ).start()
        started.append(sms)
        face = build_face(
            FaceSettings(port=0, platform=_platform_settings(workdir / "face")),
            clock=clock,
            store=new_store(),
        ).start()
        started.append(face)
        # auth and binding call each other: binding is built first, towards auth's port.
        auth_port = free_port()
        closes_at = clock.now() + LEGACY_LOGIN_PERIOD
        iit_key = SigningKey.generate()
        binding = build_binding(
            BindingSettings(
                port=0,
                database_url=backend.database_url("binding"),
                platform=_platform_settings(workdir / "binding"),
            ),
            clock=clock,
            auth_channel=channel_to(f"127.0.0.1:{auth_port}"),
        ).start()
        started.append(binding)
        auth = build_auth(
            AuthSettings(
                port=auth_port,
                database_url=backend.database_url("auth"),
                sms_target=sms.address,
                face_target=face.address,
                binding_target=binding.address,
                hash_workers=2,
                platform=_platform_settings(workdir / "auth"),
                legacy_login_closes_at=closes_at,
                iit_issuer=IIT_ISSUER,
                iit_jwks_json=json.dumps({"keys": [iit_key.public_jwk()]}),
                # Key rotation is not under test here: after the clock jumps by days (Q10,
                # Q12, Q15) auth must not sign with a key Envoy has not fetched yet (its
                # JWKS cache runs on real time).
                key_rotation_seconds=10 * 365 * 86400,
            ),
            clock=clock,
            store=new_store(),
            sms_channel=channel_to(sms.address),
            face_channel=channel_to(face.address),
            binding_channel=channel_to(binding.address),
        ).start()
        started.append(auth)
        yield Platform(
            clock=clock,
            backend=backend,
            certificates=certificates,
            workdir=workdir,
            hosts={"auth": auth, "binding": binding, "sms": sms, "face": face},
            iit_key=iit_key,
            legacy_login_closes_at=closes_at,
        )
    finally:
        for host in reversed(started):
            host.stop(grace=0)
        for channel in channels:
            channel.close()
        for store in stores:  # a store is closed by who opened it (auth closes its own too)
            store.close()
