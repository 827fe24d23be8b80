"""Small fakes of the SMS and face contracts, served by real gRPC servers (GrpcHost).

Used only while services/sms and services/face are not on this branch: they implement the
parts of InternalSmsService and InternalFaceService that auth calls, with the same
semantics (single use, purpose-bound, the same error reasons).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from etax.face.v1 import face_pb2, face_pb2_grpc
from etax.sms.v1 import sms_pb2, sms_pb2_grpc

from etax_platform.clock import Clock
from etax_platform.errors import DomainError, Reason
from etax_platform.identifiers import normalize_email, normalize_phone
from etax_platform.server import GrpcHost, Registration


@dataclass
class _Code:
    recipient: str
    channel: int
    purpose: int
    code: str


class FakeSms(sms_pb2_grpc.InternalSmsServiceServicer):
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._codes: dict[str, _Code] = {}
        self._lock = threading.Lock()

    def issue(self, recipient: str, purpose: int) -> tuple[str, str]:
        verification_id = secrets.token_hex(8)
        code = f"{secrets.randbelow(10**6):06d}"
        if "@" in recipient:
            channel, recipient = sms_pb2.CHANNEL_EMAIL, normalize_email(recipient)
        else:
            channel, recipient = sms_pb2.CHANNEL_SMS, normalize_phone(recipient)
        with self._lock:
            self._codes[verification_id] = _Code(recipient, channel, purpose, code)
        return verification_id, code

    def VerifyCode(
        self, request: sms_pb2.VerifyCodeRequest, context: grpc.ServicerContext
    ) -> sms_pb2.VerifyCodeResponse:
        if len(request.code) != 6 or not request.code.isdigit():
            raise DomainError(Reason.CODE_INVALID, metadata={"field": "code"})
        with self._lock:
            sent = self._codes.get(request.verification_id)
            if sent is None:
                raise DomainError(Reason.CODE_EXPIRED)
            if sent.purpose != request.purpose:
                raise DomainError(Reason.CODE_PURPOSE_MISMATCH)
            if not secrets.compare_digest(sent.code, request.code):
                raise DomainError(Reason.CODE_INVALID, metadata={"remaining_attempts": "4"})
            del self._codes[request.verification_id]
        response = sms_pb2.VerifyCodeResponse(
            channel=sent.channel, recipient=sent.recipient, purpose=sent.purpose
        )
        response.verified_at.FromDatetime(self._clock.now())
        return response


@dataclass
class _Ticket:
    purpose: int
    subject_ref: str
    identity: bytes
    proof: str = ""
    redeemed: bool = False


@dataclass
class FakeFace(face_pb2_grpc.InternalFaceServiceServicer):
    clock: Clock
    # Document numbers whose name the authority's records do not confirm.
    mismatched_numbers: set[str] = field(default_factory=set)
    unavailable: bool = False
    identity_checks: list[bytes] = field(default_factory=list)
    tickets: dict[str, _Ticket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def _available(self) -> None:
        if self.unavailable:
            raise DomainError(Reason.FACE_SERVICE_BUSY)

    def CheckIdentity(
        self, request: face_pb2.CheckIdentityRequest, context: grpc.ServicerContext
    ) -> face_pb2.CheckIdentityResponse:
        self._available()
        self.identity_checks.append(request.identity.SerializeToString())
        return face_pb2.CheckIdentityResponse(
            match=request.identity.document.number not in self.mismatched_numbers
        )

    def CreateTicket(
        self, request: face_pb2.CreateTicketRequest, context: grpc.ServicerContext
    ) -> face_pb2.CreateTicketResponse:
        self._available()
        ticket_id = secrets.token_hex(8)
        with self._lock:
            self.tickets[ticket_id] = _Ticket(
                request.purpose, request.subject_ref, request.identity.SerializeToString()
            )
        response = face_pb2.CreateTicketResponse(ticket_id=ticket_id, qr_payload=f"qr:{ticket_id}")
        response.expires_at.FromDatetime(self.clock.now() + timedelta(seconds=120))
        return response

    def pass_ticket(self, ticket_id: str) -> str:
        """What the APP's scan and capture would do: the ticket passes, a proof appears."""
        with self._lock:
            ticket = self.tickets[ticket_id]
            ticket.proof = secrets.token_hex(16)
            return ticket.proof

    def RedeemProof(
        self, request: face_pb2.RedeemProofRequest, context: grpc.ServicerContext
    ) -> face_pb2.RedeemProofResponse:
        self._available()
        with self._lock:
            found = [
                (ticket_id, t)
                for ticket_id, t in self.tickets.items()
                if t.proof and secrets.compare_digest(t.proof, request.proof)
            ]
            if not found:
                raise DomainError(Reason.TICKET_INVALID, metadata={"field": "proof"})
            ticket_id, ticket = found[0]
            if (
                ticket.redeemed
                or ticket.purpose != request.purpose
                or ticket.subject_ref != request.subject_ref
            ):
                raise DomainError(Reason.TICKET_INVALID, metadata={"field": "proof"})
            ticket.redeemed = True
        response = face_pb2.RedeemProofResponse(ticket_id=ticket_id)
        response.verified_at.FromDatetime(self.clock.now())
        return response


def serve_fake_sms(fake: FakeSms) -> GrpcHost:
    return GrpcHost(
        [
            Registration(
                "etax.sms.v1.InternalSmsService",
                lambda server: sms_pb2_grpc.add_InternalSmsServiceServicer_to_server(fake, server),
            )
        ],
        max_workers=16,
    ).start()


def serve_fake_face(fake: FakeFace) -> GrpcHost:
    return GrpcHost(
        [
            Registration(
                "etax.face.v1.InternalFaceService",
                lambda server: face_pb2_grpc.add_InternalFaceServiceServicer_to_server(
                    fake, server
                ),
            )
        ],
        max_workers=16,
    ).start()
