"""The auth service on port 0 with a real database and store, and the SMS and face
services it calls (fakes of their contracts on real gRPC servers, see fakes.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.common.v1 import types_pb2

from etax_platform.clock import ManualClock
from etax_platform.db import Database
from etax_platform.documents import gb11643_check_character
from etax_platform.errors import from_rpc_error
from etax_platform.kv import KeyValueStore, MemoryStore, RedisStore
from etax_platform.pii import PersonalData
from etax_platform.server import GrpcHost
from etax_platform.settings import PlatformSettings
from etax_platform.tokens import AccessClaims, TokenIssuer
from services.auth.app import build
from services.auth.keys import SigningKeys
from services.auth.settings import AuthSettings
from tests.auth.fakes import FakeFace, FakeSms, serve_fake_face, serve_fake_sms

PASSWORD = "Passw0rd.1"
REGISTRATION = types_pb2.VERIFICATION_PURPOSE_REGISTRATION
PHONE_ADD = types_pb2.VERIFICATION_PURPOSE_PHONE_ADD
REAL_NAME_UPGRADE = types_pb2.VERIFICATION_PURPOSE_REAL_NAME_UPGRADE


def resident_id(serial: int, birth: str = "19900101", region: str = "370102") -> str:
    """A valid 18-digit resident identity card number (GB 11643)."""
    first_17 = f"{region}{birth}{serial % 1000:03d}"
    return first_17 + gb11643_check_character(first_17)


_serials = iter(range(1, 10**6))


def new_resident_id() -> str:
    serial = next(_serials)
    return resident_id(serial % 1000, birth=f"19{50 + serial // 1000 % 50:02d}0101")


_phones = iter(range(10**6))


def new_phone() -> str:
    return f"139{next(_phones):08d}"


def named(number: str, name: str = "张小三", kind: int = 201) -> types_pb2.NamedDocument:
    return types_pb2.NamedDocument(
        document=types_pb2.Document(type=kind, number=number),  # type: ignore[arg-type]
        name=name,
    )


@dataclass(frozen=True)
class Backend:
    database_url: str
    store: KeyValueStore


@pytest.fixture(params=["sqlite+memory", "postgresql+redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """SQLite with the in-process store, PostgreSQL with Redis: every test runs on both
    databases and both stores."""
    store: KeyValueStore
    if request.param == "sqlite+memory":
        url = f"sqlite:///{tmp_path / 'auth.sqlite3'}"
        store = MemoryStore()
    else:
        server = request.getfixturevalue("postgres")
        url = server.url(server.create_database())
        store = RedisStore(request.getfixturevalue("redis_url"), prefix=f"t{uuid.uuid4().hex}:")
    yield Backend(url, store)


@dataclass
class Auth:
    host: GrpcHost
    account: auth_pb2_grpc.AccountServiceStub
    internal: auth_pb2_grpc.InternalAuthServiceStub
    clock: ManualClock
    sms: FakeSms
    face: FakeFace
    settings: AuthSettings
    backend: Backend
    issuer: TokenIssuer

    def as_person(self, person_id: str) -> tuple[tuple[str, str], ...]:
        token, _ = self.issuer.issue(
            AccessClaims(
                person_id=person_id,
                session_id=uuid.uuid4().hex,
                entry=types_pb2.ENTRY_NATURAL_PERSON,
                province="37",
                real_name_level=4,
            )
        )
        return (("authorization", f"Bearer {token}"),)

    def start(
        self, number: str, name: str = "张小三", kind: int = 201, overseas: bool = False
    ) -> auth_pb2.StartRegistrationResponse:
        return self.account.StartRegistration(
            auth_pb2.StartRegistrationRequest(
                identity=named(number, name, kind), overseas=overseas, province="37"
            ),
            timeout=10,
        )

    def pass_face(self, challenge: auth_pb2.FaceChallenge) -> str:
        return self.face.pass_ticket(challenge.ticket_id)

    def register(
        self,
        number: str | None = None,
        *,
        name: str = "张小三",
        kind: int = 201,
        phone: str | None = None,
        email: str = "",
        overseas: bool = False,
        password: str = PASSWORD,
        username: str = "",
    ) -> str:
        """B1 end to end: identity check, code, face (if asked), password."""
        started = self.start(number or new_resident_id(), name, kind, overseas)
        proof = ""
        if started.face_required:
            face = self.account.StartRegistrationFace(
                auth_pb2.StartRegistrationFaceRequest(registration_id=started.registration_id),
                timeout=10,
            ).face
            proof = self.pass_face(face)
        recipient = email if overseas else (phone or new_phone())
        verification_id, code = self.sms.issue(recipient, REGISTRATION)
        contact = {"email": recipient} if overseas else {"phone": recipient}
        completed = self.account.CompleteRegistration(
            auth_pb2.CompleteRegistrationRequest(
                registration_id=started.registration_id,
                verification_id=verification_id,
                code=code,
                face_proof=proof,
                password=password,
                username=username,
                **contact,
            ),
            timeout=10,
        )
        return completed.person_id

    def profile(self, person_id: str) -> auth_pb2.Profile:
        return self.account.GetProfile(
            auth_pb2.GetProfileRequest(), metadata=self.as_person(person_id), timeout=10
        ).profile

    def add_phone(self, person_id: str, phone: str, make_default: bool = False) -> auth_pb2.Phone:
        verification_id, code = self.sms.issue(phone, PHONE_ADD)
        return self.account.AddPhone(
            auth_pb2.AddPhoneRequest(
                phone=phone, verification_id=verification_id, code=code, make_default=make_default
            ),
            metadata=self.as_person(person_id),
            timeout=10,
        ).phone


def auth_settings(tmp_path: Path, database_url: str) -> AuthSettings:
    return AuthSettings(
        port=0,
        database_url=database_url,
        hash_workers=2,
        max_workers=32,
        platform=PlatformSettings(data_dir=tmp_path),
    )


@pytest.fixture
def auth(backend: Backend, tmp_path: Path) -> Iterator[Auth]:
    clock = ManualClock()
    sms, face = FakeSms(clock), FakeFace(clock)
    sms_host, face_host = serve_fake_sms(sms), serve_fake_face(face)
    settings = auth_settings(tmp_path, backend.database_url)
    host = build(
        settings,
        clock=clock,
        store=backend.store,
        sms_channel=grpc.insecure_channel(sms_host.address),
        face_channel=grpc.insecure_channel(face_host.address),
    ).start()
    database = Database(backend.database_url)
    key = SigningKeys(database, PersonalData(settings.platform.keyring()), clock).current()
    database.dispose()
    channel = grpc.insecure_channel(host.address)
    try:
        yield Auth(
            host=host,
            account=auth_pb2_grpc.AccountServiceStub(channel),
            internal=auth_pb2_grpc.InternalAuthServiceStub(channel),
            clock=clock,
            sms=sms,
            face=face,
            settings=settings,
            backend=backend,
            issuer=TokenIssuer(key, clock),
        )
    finally:
        channel.close()
        host.stop(grace=0)
        sms_host.stop(grace=0)
        face_host.stop(grace=0)


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    text: str


def failure_of(call: object, *args: object, **kwargs: object) -> Failure:
    """Calls and expects an etax domain error; returns its status code, reason and details."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    error = from_rpc_error(caught.value)
    assert error is not None, caught.value
    return Failure(caught.value.code(), error.reason.value, dict(error.metadata), error.user_text)
