"""The auth service on port 0 with a real database and store, and the real SMS and face
services it calls (each on port 0 with its own store, sharing the test's clock)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.common.v1 import types_pb2
from etax.face.v1 import face_pb2, face_pb2_grpc
from etax.sms.v1 import sms_pb2, sms_pb2_grpc

from etax_platform.clock import ManualClock
from etax_platform.db import Database
from etax_platform.errors import from_rpc_error
from etax_platform.kv import KeyValueStore, MemoryStore, RedisStore
from etax_platform.pii import PersonalData
from etax_platform.server import GrpcHost
from etax_platform.settings import PlatformSettings
from etax_platform.tokens import AccessClaims, TokenIssuer
from services.auth.app import MIGRATIONS as AUTH_MIGRATIONS
from services.auth.app import build
from services.auth.keys import SigningKeys
from services.auth.settings import AuthSettings
from services.auth.storage import AccountStore
from services.binding.app import MIGRATIONS as BINDING_MIGRATIONS
from services.face.app import build as build_face
from services.face.settings import FaceSettings
from services.sms.app import build as build_sms
from services.sms.settings import SmsSettings
from tests.conftest import STORE_URL_FIXTURES
from tests.harness.numbers import resident_id
from tests.harness.schemas import migrated_sqlite_url

if TYPE_CHECKING:
    from tests.auth.platform import Platform

PASSWORD = "Passw0rd.1"
REGISTRATION = types_pb2.VERIFICATION_PURPOSE_REGISTRATION
PHONE_ADD = types_pb2.VERIFICATION_PURPOSE_PHONE_ADD
REAL_NAME_UPGRADE = types_pb2.VERIFICATION_PURPOSE_REAL_NAME_UPGRADE


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
    # Auth's database, at its newest migration.
    database_url: str
    # A fresh, empty store per service (each service has its own keys).
    new_store: Callable[[], KeyValueStore]
    # Another fresh database (another service's, by name: at its newest migration).
    new_database_url: Callable[[str], str]
    # A second client of the same store (a second replica's), or the same in-process one.
    same_store: Callable[[KeyValueStore], KeyValueStore]
    # Database settings every service's settings get (behind PgBouncer: no prepares).
    db_settings: dict[str, Any] = field(default_factory=dict)


# The schemas a new database starts at, by service (tests/harness/schemas.py).
MIGRATIONS = {"auth": AUTH_MIGRATIONS, "binding": BINDING_MIGRATIONS}


@pytest.fixture
def accounts(database_url: str, personal_data: PersonalData) -> Iterator[AccountStore]:
    """Auth's storage alone, on a fresh database of each kind at the newest migration."""
    database = Database(database_url)
    database.migrate(AUTH_MIGRATIONS)
    yield AccountStore(database, personal_data)
    database.dispose()


@pytest.fixture(params=["sqlite+memory", "postgresql+redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """SQLite with the in-process store, PostgreSQL with Redis: every test runs on both
    databases and both stores. Stores made through it are closed at the end of the test
    (services close only the stores they open themselves). "postgresql+redis-cluster"
    (Redis Cluster) and "pgbouncer+redis" (PostgreSQL through PgBouncer in transaction
    mode) are for the tests that ask for them with an indirect parametrize."""
    opened: list[KeyValueStore] = []

    def track(store: KeyValueStore) -> KeyValueStore:
        opened.append(store)
        return store

    if request.param == "sqlite+memory":

        def new_sqlite(name: str) -> str:
            return migrated_sqlite_url(tmp_path / f"{name}.sqlite3", MIGRATIONS[name])

        backend = Backend(
            new_sqlite("auth"), lambda: track(MemoryStore()), new_sqlite, lambda store: store
        )
    else:
        database_kind, store_kind = request.param.split("+")
        server = request.getfixturevalue("postgres")
        redis_url = request.getfixturevalue(STORE_URL_FIXTURES[store_kind])
        through = server
        db_settings: dict[str, Any] = {}
        if database_kind == "pgbouncer":
            through = request.getfixturevalue("pgbouncer_server")
            db_settings = {"db_prepared_statements": False, "db_statement_timeout_ms": 0}
        databases: list[str] = []

        def new_database(name: str) -> str:
            databases.append(server.migrated_database(MIGRATIONS[name]))
            return through.url(databases[-1])

        def same_store(store: KeyValueStore) -> KeyValueStore:
            assert isinstance(store, RedisStore)
            return track(RedisStore(redis_url, prefix=store._prefix))

        backend = Backend(
            new_database("auth"),
            lambda: track(RedisStore(redis_url, prefix=f"t{uuid.uuid4().hex}:")),
            new_database,
            same_store,
            db_settings,
        )
    yield backend
    for store in opened:
        store.close()
    if request.param != "sqlite+memory":
        # Each test makes one or two databases; dropping them keeps the server's data
        # directory small, so the session's teardown does not spend minutes deleting it.
        with server.admin() as connection:
            for name in databases:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class SmsDriver:
    """What a person's phone (or mailbox) does: ask for a code, read it from the outbox."""

    public: sms_pb2_grpc.SmsServiceStub
    outbox: sms_pb2_grpc.SmsOutboxServiceStub

    def issue(self, recipient: str, purpose: int) -> tuple[str, str]:
        to = {"email": recipient} if "@" in recipient else {"phone": recipient}
        sent = self.public.SendCode(
            sms_pb2.SendCodeRequest(purpose=purpose, **to),  # type: ignore[arg-type]
            timeout=10,
        )
        messages = self.outbox.ListMessages(
            sms_pb2.ListMessagesRequest(recipient=recipient), timeout=10
        ).messages
        (code,) = [m.code for m in messages if m.verification_id == sent.verification_id]
        return sent.verification_id, code


@dataclass
class FaceDriver:
    """What the tax APP does with a QR code: scan it and submit a capture."""

    public: face_pb2_grpc.FaceServiceStub

    def scan(self, challenge: auth_pb2.FaceChallenge) -> face_pb2.ScanTicketResponse:
        return self.public.ScanTicket(
            face_pb2.ScanTicketRequest(qr_payload=challenge.qr_payload), timeout=10
        )

    def pass_(self, challenge: auth_pb2.FaceChallenge) -> str:
        scanned = self.scan(challenge)
        ticket = self.public.SubmitCapture(
            face_pb2.SubmitCaptureRequest(
                ticket_id=scanned.ticket_id, scan_token=scanned.scan_token, capture=b"pass"
            ),
            timeout=10,
        ).ticket
        assert ticket.state == face_pb2.TICKET_STATE_PASSED, ticket
        return ticket.proof


@dataclass
class Auth:
    host: GrpcHost
    account: auth_pb2_grpc.AccountServiceStub
    internal: auth_pb2_grpc.InternalAuthServiceStub
    clock: ManualClock
    sms: SmsDriver
    face: FaceDriver
    face_host: GrpcHost
    store: KeyValueStore
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
        self,
        number: str,
        name: str = "张小三",
        kind: int = 201,
        overseas: bool = False,
        province: str = "37",
    ) -> auth_pb2.StartRegistrationResponse:
        return self.account.StartRegistration(
            auth_pb2.StartRegistrationRequest(
                identity=named(number, name, kind), overseas=overseas, province=province
            ),
            timeout=10,
        )

    def pass_face(self, challenge: auth_pb2.FaceChallenge) -> str:
        return self.face.pass_(challenge)

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

    def add_phone(self, person_id: str, phone: str) -> auth_pb2.Phone:
        """C3: a phone added (verified by SMS) becomes the default."""
        verification_id, code = self.sms.issue(phone, PHONE_ADD)
        return self.account.AddPhone(
            auth_pb2.AddPhoneRequest(phone=phone, verification_id=verification_id, code=code),
            metadata=self.as_person(person_id),
            timeout=10,
        ).phone

    def set_default_phone(self, person_id: str, phone_id: str) -> None:
        self.account.SetDefaultPhone(
            auth_pb2.SetDefaultPhoneRequest(phone_id=phone_id),
            metadata=self.as_person(person_id),
            timeout=10,
        )


def auth_settings(tmp_path: Path, database_url: str, **overrides: object) -> AuthSettings:
    return AuthSettings(
        port=0,
        database_url=database_url,
        hash_workers=2,
        max_workers=32,
        platform=PlatformSettings(data_dir=tmp_path),
        **overrides,  # type: ignore[arg-type]
    )


def start_sms_and_face(
    backend: Backend, tmp_path: Path, clock: ManualClock
) -> tuple[GrpcHost, GrpcHost]:
    """The real sms (outbox on) and face services auth calls, on the test's clock."""
    sms_host = build_sms(
        SmsSettings(
            port=0,
            outbox_enabled=True,
            throttle_limit=100_000,  # E2 is the SMS service's rule, tested there
            platform=PlatformSettings(data_dir=tmp_path / "sms"),
        ),
        clock=clock,
        store=backend.new_store(),
    ).start()
    try:
        face_host = build_face(
            FaceSettings(port=0, platform=PlatformSettings(data_dir=tmp_path / "face")),
            clock=clock,
            store=backend.new_store(),
        ).start()
    except BaseException:
        sms_host.stop(grace=0)
        raise
    return sms_host, face_host


@pytest.fixture
def auth(backend: Backend, tmp_path: Path) -> Iterator[Auth]:
    clock = ManualClock()
    sms_host, face_host = start_sms_and_face(backend, tmp_path, clock)
    settings = auth_settings(tmp_path / "auth", backend.database_url, **backend.db_settings)
    store = backend.new_store()
    dependencies = [grpc.insecure_channel(h.address) for h in (sms_host, face_host)]
    host = build(
        settings,
        clock=clock,
        store=store,
        sms_channel=dependencies[0],
        face_channel=dependencies[1],
    ).start()
    database = Database(backend.database_url, settings.database_pool())
    key = SigningKeys(database, PersonalData(settings.platform.keyring()), clock).current()
    database.dispose()
    channels = [grpc.insecure_channel(h.address) for h in (host, sms_host, face_host)]
    try:
        yield Auth(
            host=host,
            account=auth_pb2_grpc.AccountServiceStub(channels[0]),
            internal=auth_pb2_grpc.InternalAuthServiceStub(channels[0]),
            clock=clock,
            sms=SmsDriver(
                sms_pb2_grpc.SmsServiceStub(channels[1]),
                sms_pb2_grpc.SmsOutboxServiceStub(channels[1]),
            ),
            face=FaceDriver(face_pb2_grpc.FaceServiceStub(channels[2])),
            face_host=face_host,
            store=store,
            settings=settings,
            backend=backend,
            issuer=TokenIssuer(key, clock),
        )
    finally:
        for channel in channels:
            channel.close()
        for running in (host, sms_host, face_host):
            running.stop(grace=0)
        for channel in dependencies:
            channel.close()


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


@pytest.fixture
def platform(backend: Backend, tmp_path: Path) -> Iterator[Platform]:
    """Auth, binding, SMS and face on port 0, sharing one ManualClock (tests/auth/platform.py)."""
    from tests.auth.platform import start_platform  # noqa: PLC0415 - it imports this module

    with start_platform(backend, tmp_path) as running:
        yield running
