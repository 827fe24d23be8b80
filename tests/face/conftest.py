"""A face host built with `app.build` on port 0, over each store, with a manual clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from etax.common.v1 import types_pb2
from etax.face.v1 import face_pb2, face_pb2_grpc

from etax_platform.clock import ManualClock
from etax_platform.errors import DomainError, from_rpc_error
from etax_platform.kv import KeyValueStore
from etax_platform.pii import PersonalData
from etax_platform.server import GrpcHost
from etax_platform.settings import PlatformSettings
from services.face.app import build
from services.face.providers import FaceProvider
from services.face.providers.simulator import SimulatedProvider
from services.face.settings import FaceSettings

SECRET = "face-test-secret-0123456789abcdef-xyz"
LOGIN = types_pb2.VERIFICATION_PURPOSE_LOGIN
PERSON = "person-42"
ID_NUMBER = "370102199001011234"
NAME = "张小三"
IDENTITY = types_pb2.NamedDocument(
    document=types_pb2.Document(
        type=types_pb2.DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD, number=ID_NUMBER
    ),
    name=NAME,
)
APP_IDENTITY = types_pb2.NamedDocument(
    document=types_pb2.Document(
        type=types_pb2.DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD, number="110101198001011239"
    ),
    name="李四",
)


@dataclass
class Face:
    host: GrpcHost
    channel: grpc.Channel
    public: face_pb2_grpc.FaceServiceStub
    internal: face_pb2_grpc.InternalFaceServiceStub

    def create(
        self,
        identity: types_pb2.NamedDocument | None = IDENTITY,
        subject_ref: str = PERSON,
        purpose: int = LOGIN,
    ) -> face_pb2.CreateTicketResponse:
        return self.internal.CreateTicket(
            face_pb2.CreateTicketRequest(
                purpose=purpose, subject_ref=subject_ref, identity=identity
            ),
            timeout=5,
        )

    def scan(self, qr_payload: str) -> face_pb2.ScanTicketResponse:
        return self.public.ScanTicket(face_pb2.ScanTicketRequest(qr_payload=qr_payload), timeout=5)

    def submit(
        self,
        ticket_id: str,
        scan_token: str,
        capture: bytes,
        identity: types_pb2.NamedDocument | None = None,
    ) -> face_pb2.Ticket:
        response = self.public.SubmitCapture(
            face_pb2.SubmitCaptureRequest(
                ticket_id=ticket_id, scan_token=scan_token, capture=capture, identity=identity
            ),
            timeout=10,
        )
        return response.ticket

    def get(self, ticket_id: str) -> face_pb2.Ticket:
        return self.public.GetTicket(
            face_pb2.GetTicketRequest(ticket_id=ticket_id), timeout=5
        ).ticket

    def redeem(
        self, proof: str, purpose: int = LOGIN, subject_ref: str = PERSON
    ) -> face_pb2.RedeemProofResponse:
        return self.internal.RedeemProof(
            face_pb2.RedeemProofRequest(proof=proof, purpose=purpose, subject_ref=subject_ref),
            timeout=5,
        )

    def collect(
        self, ticket_id: str, subject_ref: str = PERSON
    ) -> face_pb2.CollectFailuresResponse:
        return self.internal.CollectFailures(
            face_pb2.CollectFailuresRequest(ticket_id=ticket_id, subject_ref=subject_ref),
            timeout=5,
        )

    def scanned_ticket(self, **create: Any) -> tuple[str, str]:
        """A new ticket, scanned: (ticket id, scan token)."""
        created = self.create(**create)
        return created.ticket_id, self.scan(created.qr_payload).scan_token


def domain_error(error: grpc.RpcError) -> DomainError:
    """The DomainError a failed call carried; fails the test if it carried none."""
    found = from_rpc_error(error)
    assert found is not None, f"not a domain error: {error.code()} {error.details()}"
    return found


@pytest.fixture
def face_settings(tmp_path: Path) -> FaceSettings:
    return FaceSettings(
        port=0,
        secret=SECRET,
        watch_poll_seconds=0.02,
        grace_seconds=2,
        platform=PlatformSettings(data_dir=tmp_path),
    )


FaceFactory = Callable[..., Face]


@pytest.fixture
def face_factory(
    kv_store: KeyValueStore,
    clock: ManualClock,
    personal_data: PersonalData,
    face_settings: FaceSettings,
) -> Iterator[FaceFactory]:
    """Builds started hosts sharing one store (replicas), stopped at the end."""
    made: list[Face] = []

    def make(with_provider: FaceProvider | None = None, **overrides: Any) -> Face:
        """A host with `with_provider`, or the one its settings name (default: simulator)."""
        settings = face_settings.model_copy(update=overrides)
        if with_provider is None and settings.provider == "simulator":
            with_provider = SimulatedProvider(slow_seconds=0.05)
        host = build(
            settings,
            clock=clock,
            store=kv_store,
            provider=with_provider,
            personal_data=personal_data,
        ).start()
        channel = grpc.insecure_channel(host.address)
        face = Face(
            host,
            channel,
            face_pb2_grpc.FaceServiceStub(channel),
            face_pb2_grpc.InternalFaceServiceStub(channel),
        )
        made.append(face)
        return face

    yield make
    for face in made:
        face.channel.close()
        face.host.stop(grace=0)


@pytest.fixture
def face(face_factory: FaceFactory) -> Face:
    return face_factory()
