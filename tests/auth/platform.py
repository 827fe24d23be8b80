"""All four services for login tests: auth, binding, SMS and face, each built with its
`app.build(...)` on port 0 with a real database and store, sharing one ManualClock.

Binding calls auth (persons, public keys) and auth calls binding (CheckAccess): binding
is built first with a channel that connects once auth's port is known (`LateChannel`).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.binding.v1 import binding_pb2, binding_pb2_grpc
from etax.common.v1 import types_pb2
from etax.face.v1 import face_pb2, face_pb2_grpc
from etax.sms.v1 import sms_pb2, sms_pb2_grpc
from sqlalchemy import select

from etax_platform.clock import ManualClock, to_timestamp
from etax_platform.db import Database
from etax_platform.kv import KeyValueStore
from etax_platform.pii import PersonalData
from etax_platform.server import GrpcHost
from etax_platform.settings import PlatformSettings
from etax_platform.tokens import AccessClaims, TokenIssuer
from services.auth.app import build
from services.auth.keys import SigningKeys
from services.auth.models import audit_events
from services.auth.settings import AuthSettings
from services.binding.app import build as build_binding
from services.binding.settings import BindingSettings
from tests.auth.conftest import (
    PASSWORD,
    Auth,
    Backend,
    FaceDriver,
    SmsDriver,
    auth_settings,
    new_phone,
    new_resident_id,
    start_sms_and_face,
)
from tests.harness.numbers import uscc

SHANDONG, BEIJING = "37", "11"
AUTHORITIES = {
    SHANDONG: types_pb2.TaxAuthority(
        code="13701020000", name="国家税务总局济南市历下区税务局", province=SHANDONG
    ),
    BEIJING: types_pb2.TaxAuthority(
        code="11101050000", name="国家税务总局北京市朝阳区税务局", province=BEIJING
    ),
}
NATURAL = types_pb2.ENTRY_NATURAL_PERSON
ENTERPRISE = types_pb2.ENTRY_ENTERPRISE
AGENT = types_pb2.ENTRY_AGENT
SUBJECT = types_pb2.ENTRY_SPECIFIC_SUBJECT
INSPECTION = types_pb2.SUBJECT_TYPE_CROSS_REGION_INSPECTION
LOGIN = types_pb2.VERIFICATION_PURPOSE_LOGIN
_serial = itertools.count(1000)


def new_uscc(division: str = "370102") -> str:
    """A valid unified social credit code (GB 32100)."""
    return uscc(next(_serial), division)


class LateChannel:
    """The part of grpc.Channel a generated stub uses, connected to its target later."""

    def __init__(self) -> None:
        self._channel: grpc.Channel | None = None

    def connect(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        assert self._channel is not None, "LateChannel used before connect()"
        self._channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        assert self._channel is not None, "LateChannel used before connect()"
        self._channel.unsubscribe(callback)

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        **_: Any,
    ) -> Callable[..., Any]:
        def call(request: Any, **kwargs: Any) -> Any:
            assert self._channel is not None, "LateChannel used before connect()"
            return self._channel.unary_unary(
                method,
                request_serializer=request_serializer,
                response_deserializer=response_deserializer,
            )(request, **kwargs)

        return call

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


@dataclass
class Person:
    person_id: str
    document: str
    phone: str
    name: str = "张小三"
    password: str = PASSWORD
    username: str = ""

    @property
    def named(self) -> types_pb2.NamedDocument:
        return types_pb2.NamedDocument(
            document=types_pb2.Document(
                type=types_pb2.DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD, number=self.document
            ),
            name=self.name,
        )


def bearer(session: auth_pb2.Session) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {session.access_token}"),)


@dataclass
class AuthServer:
    host: GrpcHost
    auth: auth_pb2_grpc.AuthServiceStub
    account: auth_pb2_grpc.AccountServiceStub
    internal: auth_pb2_grpc.InternalAuthServiceStub
    channel: grpc.Channel
    # Its channels to SMS, face and binding (the test closes what it opened).
    dependencies: list[grpc.Channel]


@dataclass
class Platform:
    clock: ManualClock
    backend: Backend
    settings: AuthSettings
    store: KeyValueStore
    server: AuthServer
    binding_host: GrpcHost
    binding: binding_pb2_grpc.BindingServiceStub
    binding_internal: binding_pb2_grpc.InternalBindingServiceStub
    sms: SmsDriver
    face: FaceDriver
    # The accounts side's helpers (registration, profile, phones), on this auth server.
    accounts: Auth
    sms_outbox: sms_pb2_grpc.SmsOutboxServiceStub
    binding_address: str
    sms_address: str
    face_address: str
    sms_host: GrpcHost
    face_host: GrpcHost
    extra_servers: list[AuthServer] = field(default_factory=list)

    @property
    def auth(self) -> auth_pb2_grpc.AuthServiceStub:
        return self.server.auth

    @property
    def internal(self) -> auth_pb2_grpc.InternalAuthServiceStub:
        return self.server.internal

    # --- persons ---------------------------------------------------------------------------

    def person(self, *, name: str = "张小三", username: str = "", **options: Any) -> Person:
        document, phone = new_resident_id(), new_phone()
        person_id = self.accounts.register(
            document, name=name, phone=phone, username=username, **options
        )
        return Person(person_id, document, phone, name, options.get("password", PASSWORD), username)

    # --- login -----------------------------------------------------------------------------

    def start(
        self,
        account: str,
        password: str = PASSWORD,
        *,
        entry: int = NATURAL,
        province: str = SHANDONG,
        server: AuthServer | None = None,
        **target: Any,
    ) -> auth_pb2.StartLoginResponse:
        return (server or self.server).auth.StartLogin(
            auth_pb2.StartLoginRequest(
                entry=entry, account=account, password=password, province=province, **target
            ),
            timeout=20,
        )

    def last_code(self, phone: str, purpose: int = LOGIN) -> str:
        messages = self.sms_outbox.ListMessages(
            sms_pb2.ListMessagesRequest(recipient=phone), timeout=10
        ).messages
        return next(m.code for m in messages if m.purpose == purpose)

    def send_code(self, challenge_id: str) -> auth_pb2.SendLoginCodeResponse:
        return self.auth.SendLoginCode(
            auth_pb2.SendLoginCodeRequest(challenge_id=challenge_id), timeout=10
        )

    def complete_with_code(self, challenge_id: str, code: str) -> auth_pb2.Session:
        return self.auth.CompleteLoginWithCode(
            auth_pb2.CompleteLoginWithCodeRequest(challenge_id=challenge_id, code=code),
            timeout=10,
        ).session

    def login(self, person: Person, account: str | None = None, **options: Any) -> auth_pb2.Session:
        """Both steps: password, then the SMS code from the outbox."""
        started = self.start(account or person.document, person.password, **options)
        self.send_code(started.challenge_id)
        return self.complete_with_code(started.challenge_id, self.last_code(person.phone))

    def login_with_face(self, person: Person, **options: Any) -> auth_pb2.Session:
        started = self.start(person.document, person.password, **options)
        face = self.auth.StartLoginFace(
            auth_pb2.StartLoginFaceRequest(challenge_id=started.challenge_id), timeout=10
        ).face
        proof = self.face.pass_(face)
        return self.auth.CompleteLoginWithFace(
            auth_pb2.CompleteLoginWithFaceRequest(challenge_id=started.challenge_id, proof=proof),
            timeout=10,
        ).session

    def capture(
        self,
        face: auth_pb2.FaceChallenge,
        capture: bytes,
        identity: types_pb2.NamedDocument | None = None,
    ) -> face_pb2.Ticket:
        scanned = self.face.scan(face)
        return self.face.public.SubmitCapture(
            face_pb2.SubmitCaptureRequest(
                ticket_id=scanned.ticket_id,
                scan_token=scanned.scan_token,
                capture=capture,
                identity=identity,
            ),
            timeout=10,
        ).ticket

    # --- binding seed data -----------------------------------------------------------------

    def enterprise(
        self,
        legal_representative: Person,
        financial_officer: Person | None = None,
        *,
        province: str = SHANDONG,
        code: str | None = None,
        name: str = "济南测试有限公司",
    ) -> str:
        """A2 and F2: the registration is confirmed and the LR (and FO) confirm."""
        code = code or new_uscc("370102" if province == SHANDONG else "110105")
        request = binding_pb2.ConfirmTaxpayerRegistrationRequest(
            enterprise_code=code,
            name=name,
            tax_authority=AUTHORITIES[province],
            legal_representative=legal_representative.named,
        )
        if financial_officer is not None:
            request.financial_officer.CopyFrom(financial_officer.named)
        response = self.binding_internal.ConfirmTaxpayerRegistration(request, timeout=10)
        people = [legal_representative] + ([financial_officer] if financial_officer else [])
        for relation, person in zip(response.relations, people, strict=True):
            self.confirm_relation(relation.relation_id, person)
        return code

    def natural_session(self, person: Person) -> auth_pb2.Session:
        return self.login(person)

    def confirm_relation(self, relation_id: str, person: Person) -> None:
        self.binding.ConfirmRelation(
            binding_pb2.ConfirmRelationRequest(relation_id=relation_id),
            metadata=bearer(self.accounts_token(person)),
            timeout=10,
        )

    def accounts_token(self, person: Person) -> auth_pb2.Session:
        """A session to act in the account centers (tokens signed by auth's current key)."""
        token, _expires = self.accounts.issuer.issue(
            AccessClaims(
                person_id=person.person_id,
                session_id="seed",
                entry=NATURAL,
                province=SHANDONG,
                real_name_level=4,
            )
        )
        return auth_pb2.Session(access_token=token)

    def project(
        self,
        enterprise_code: str,
        number: str,
        province: str,
        *,
        handlers: tuple[Person, ...] = (),
        contacts: tuple[Person, ...] = (),
        subject_type: int = INSPECTION,
    ) -> None:
        self.binding_internal.RecordCrossRegionProject(
            binding_pb2.RecordCrossRegionProjectRequest(
                enterprise_code=enterprise_code,
                subject_type=subject_type,
                project_number=number,
                tax_authority=AUTHORITIES[province],
                handlers=[p.named for p in handlers],
                contacts=[p.named for p in contacts],
            ),
            timeout=10,
        )

    def agency(self, agents: tuple[Person, ...], clients: tuple[str, ...]) -> str:
        """F4: the basic-information form and one agreement per client."""
        agency_code = new_uscc()
        self.binding_internal.SubmitAgencyInformation(
            binding_pb2.SubmitAgencyInformationRequest(
                agency_code=agency_code,
                name="山东测试税务师事务所",
                agents=[a.named for a in agents],
            ),
            timeout=10,
        )
        now = self.clock.now()
        for client in clients:
            self.binding_internal.SubmitAgencyAgreement(
                binding_pb2.SubmitAgencyAgreementRequest(
                    agency_code=agency_code,
                    client_code=client,
                    agents=[types_pb2.Document(type=201, number=a.document) for a in agents],
                    valid_from=to_timestamp(now.replace(year=now.year - 1)),
                    valid_until=to_timestamp(now.replace(year=now.year + 1)),
                ),
                timeout=10,
            )
        return agency_code

    # --- auth's own records ----------------------------------------------------------------

    def audit(self, **where: Any) -> list[dict[str, Any]]:
        """Audit events in order, optionally only those matching columns."""
        database = Database(self.settings.database_url_for("auth"), self.settings.database_pool())
        try:
            query = select(audit_events).order_by(audit_events.c.id)
            for column, value in where.items():
                query = query.where(audit_events.c[column] == value)
            with database.reading() as session:
                return [dict(row._mapping) for row in session.execute(query)]
        finally:
            database.dispose()

    def second_server(self, **overrides: Any) -> AuthServer:
        """Another auth replica on the same database and store (overrides: settings that
        differ, e.g. a rotated key)."""
        server = _start_auth(
            self.settings.model_copy(update=overrides) if overrides else self.settings,
            self.clock,
            self.backend.same_store(self.store),
            self.sms_address,
            self.face_address,
            self.binding_address,
        )
        self.extra_servers.append(server)
        return server


def _start_auth(
    settings: AuthSettings,
    clock: ManualClock,
    store: KeyValueStore,
    sms_address: str,
    face_address: str,
    binding_address: str,
) -> AuthServer:
    dependencies = [grpc.insecure_channel(a) for a in (sms_address, face_address, binding_address)]
    host = build(
        settings,
        clock=clock,
        store=store,
        sms_channel=dependencies[0],
        face_channel=dependencies[1],
        binding_channel=dependencies[2],
    ).start()
    channel = grpc.insecure_channel(host.address)
    return AuthServer(
        host=host,
        auth=auth_pb2_grpc.AuthServiceStub(channel),
        account=auth_pb2_grpc.AccountServiceStub(channel),
        internal=auth_pb2_grpc.InternalAuthServiceStub(channel),
        channel=channel,
        dependencies=dependencies,
    )


@contextlib.contextmanager
def start_platform(backend: Backend, tmp_path: Path, **auth_overrides: Any) -> Iterator[Platform]:
    clock = ManualClock()
    hosts: list[GrpcHost] = []
    channels: list[grpc.Channel] = []
    late = LateChannel()
    servers: list[AuthServer] = []
    try:
        sms_host, face_host = start_sms_and_face(backend, tmp_path, clock)
        hosts += [sms_host, face_host]
        settings = auth_settings(
            tmp_path / "auth",
            backend.database_url,
            **{"audit_batch_seconds": 0, **backend.db_settings, **auth_overrides},
        )
        # One set of PII keys seals; binding's blind index has keys of its own (settings).
        personal_data = PersonalData(settings.platform.keyring())
        binding_host = build_binding(
            BindingSettings(
                port=0,
                database_url=backend.new_database_url("binding"),
                platform=PlatformSettings(data_dir=tmp_path / "binding"),
                **backend.db_settings,
            ),
            clock=clock,
            auth_channel=late,  # type: ignore[arg-type]
            personal_data=personal_data,
        ).start()
        hosts.append(binding_host)
        store = backend.new_store()
        server = _start_auth(
            settings, clock, store, sms_host.address, face_host.address, binding_host.address
        )
        servers.append(server)
        late.connect(server.host.address)
        database = Database(settings.database_url_for("auth"), settings.database_pool())
        key = SigningKeys(database, personal_data, clock).current()
        database.dispose()
        for address in (binding_host.address, sms_host.address, face_host.address):
            channels.append(grpc.insecure_channel(address))
        binding_channel, sms_channel, face_channel = channels
        accounts = Auth(
            host=server.host,
            account=server.account,
            internal=server.internal,
            clock=clock,
            sms=SmsDriver(
                sms_pb2_grpc.SmsServiceStub(sms_channel),
                sms_pb2_grpc.SmsOutboxServiceStub(sms_channel),
            ),
            face=FaceDriver(face_pb2_grpc.FaceServiceStub(face_channel)),
            face_host=face_host,
            store=store,
            settings=settings,
            backend=backend,
            issuer=TokenIssuer(key, clock),
        )
        platform = Platform(
            clock=clock,
            backend=backend,
            settings=settings,
            store=store,
            server=server,
            binding_host=binding_host,
            binding=binding_pb2_grpc.BindingServiceStub(binding_channel),
            binding_internal=binding_pb2_grpc.InternalBindingServiceStub(binding_channel),
            sms=accounts.sms,
            face=accounts.face,
            accounts=accounts,
            sms_outbox=sms_pb2_grpc.SmsOutboxServiceStub(sms_channel),
            binding_address=binding_host.address,
            sms_address=sms_host.address,
            face_address=face_host.address,
            sms_host=sms_host,
            face_host=face_host,
            extra_servers=servers,
        )
        yield platform
    finally:
        for channel in channels:
            channel.close()
        for running in servers:
            running.channel.close()
            running.host.stop(grace=0)
            for dependency in running.dependencies:
                dependency.close()
        for host in reversed(hosts):
            host.stop(grace=0)
        late.close()
