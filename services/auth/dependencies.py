"""The SMS, face and binding services as auth uses them, through their protobuf contracts
only.

Each call has a deadline; a reason raised by the called service (CODE_INVALID,
TICKET_INVALID, FACE_SERVICE_BUSY, ...) reaches the user unchanged, and a service that is
down becomes PROVIDER_UNAVAILABLE (etax_platform.clients.Dependency).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import grpc
from etax.binding.v1 import binding_pb2, binding_pb2_grpc
from etax.common.v1 import types_pb2
from etax.face.v1 import face_pb2, face_pb2_grpc
from etax.sms.v1 import sms_pb2, sms_pb2_grpc

from etax_platform.clients import Dependency
from etax_platform.clock import optional_instant
from etax_platform.documents import Document, parse_document
from etax_platform.errors import DomainError
from services.auth.domain import Channel, Purpose


@dataclass(frozen=True)
class VerifiedCode:
    channel: Channel
    # Normalised by the SMS service: 11-digit phone or lower-case email.
    recipient: str
    verified_at: datetime | None


@dataclass(frozen=True)
class FaceChallenge:
    ticket_id: str
    qr_payload: str
    expires_at: datetime | None


@dataclass(frozen=True)
class SentCode:
    verification_id: str
    masked_recipient: str
    expires_at: datetime | None


@dataclass(frozen=True)
class FaceResult:
    ticket_id: str
    verified_at: datetime | None
    # The identity that passed (the APP's, for subject-less tickets); None if unreadable.
    identity: tuple[Document, str] | None = None
    # Mismatches before the pass not reported before (E1 counts them).
    uncollected_failures: int = 0


@dataclass(frozen=True)
class CollectedFailures:
    new_failures: int
    # etax.face.v1.TicketState
    state: int


def _named_document(document: Document, name: str) -> types_pb2.NamedDocument:
    return types_pb2.NamedDocument(
        document=types_pb2.Document(type=int(document.type), number=document.number),  # type: ignore[arg-type]
        name=name,
    )


class SmsCodes:
    """InternalSmsService: codes to the account's phone and their checks (single use,
    purpose-bound, E2)."""

    def __init__(self, channel: grpc.Channel, timeout: float) -> None:
        self._stub = sms_pb2_grpc.InternalSmsServiceStub(channel)
        self._dependency = Dependency("sms", channel, timeout)

    def verify(self, verification_id: str, code: str, purpose: Purpose) -> VerifiedCode:
        response: sms_pb2.VerifyCodeResponse = self._dependency.call(
            self._stub.VerifyCode,
            sms_pb2.VerifyCodeRequest(
                verification_id=verification_id,
                code=code,
                purpose=int(purpose),  # type: ignore[arg-type]
            ),
        )
        return VerifiedCode(
            channel=Channel(response.channel),
            recipient=response.recipient,
            verified_at=optional_instant(response, "verified_at"),
        )

    def send(self, recipient: str, purpose: Purpose) -> SentCode:
        """InternalSmsService.SendAccountCode: a code to a phone (or, B6, an email) auth
        chose from the account (E2 applies)."""
        contact = {"email": recipient} if "@" in recipient else {"phone": recipient}
        response: sms_pb2.SendAccountCodeResponse = self._dependency.call(
            self._stub.SendAccountCode,
            sms_pb2.SendAccountCodeRequest(purpose=int(purpose), **contact),  # type: ignore[arg-type]
        )
        return SentCode(
            verification_id=response.verification_id,
            masked_recipient=response.masked_recipient,
            expires_at=optional_instant(response, "expires_at"),
        )


class FaceChecks:
    """InternalFaceService: identity check, tickets, single-use proofs (B1-B3, B7)."""

    def __init__(self, channel: grpc.Channel, timeout: float) -> None:
        self._stub = face_pb2_grpc.InternalFaceServiceStub(channel)
        self._dependency = Dependency("face", channel, timeout)

    def identity_matches(self, document: Document, name: str) -> bool:
        response: face_pb2.CheckIdentityResponse = self._dependency.call(
            self._stub.CheckIdentity,
            face_pb2.CheckIdentityRequest(identity=_named_document(document, name)),
        )
        return response.match

    def create_ticket(
        self, purpose: Purpose, subject_ref: str, document: Document | None, name: str = ""
    ) -> FaceChallenge:
        """A ticket for the person; without a document, a subject-less ticket where the
        APP supplies the identity (D5 face login)."""
        response: face_pb2.CreateTicketResponse = self._dependency.call(
            self._stub.CreateTicket,
            face_pb2.CreateTicketRequest(
                purpose=int(purpose),  # type: ignore[arg-type]
                subject_ref=subject_ref,
                identity=None if document is None else _named_document(document, name),
            ),
        )
        return FaceChallenge(
            ticket_id=response.ticket_id,
            qr_payload=response.qr_payload,
            expires_at=optional_instant(response, "expires_at"),
        )

    def redeem(self, proof: str, purpose: Purpose, subject_ref: str) -> FaceResult:
        response: face_pb2.RedeemProofResponse = self._dependency.call(
            self._stub.RedeemProof,
            face_pb2.RedeemProofRequest(
                proof=proof,
                purpose=int(purpose),  # type: ignore[arg-type]
                subject_ref=subject_ref,
            ),
        )
        return FaceResult(
            ticket_id=response.ticket_id,
            verified_at=optional_instant(response, "verified_at"),
            identity=_identity(response.identity) if response.HasField("identity") else None,
            uncollected_failures=max(0, response.uncollected_failures),
        )

    def collect_failures(self, ticket_id: str, subject_ref: str) -> CollectedFailures:
        response: face_pb2.CollectFailuresResponse = self._dependency.call(
            self._stub.CollectFailures,
            face_pb2.CollectFailuresRequest(ticket_id=ticket_id, subject_ref=subject_ref),
        )
        return CollectedFailures(max(0, response.new_failures), response.state)


def _identity(message: types_pb2.NamedDocument) -> tuple[Document, str] | None:
    try:
        document = parse_document(message.document.type, message.document.number)
    except DomainError:
        return None
    return document, " ".join(message.name.split())


class Bindings:
    """InternalBindingService.CheckAccess: may this person act as this target (F3-F5, D5)?
    RELATION_NOT_FOUND from binding passes through unchanged."""

    def __init__(self, channel: grpc.Channel, timeout: float) -> None:
        self._stub = binding_pb2_grpc.InternalBindingServiceStub(channel)
        self._dependency = Dependency("binding", channel, timeout)

    def search_subjects(
        self, person_id: str, subject_type: int, query: str, province: str
    ) -> list[binding_pb2.CrossRegionProject]:
        """D5 during login: the person's related subjects matching the query."""
        response: binding_pb2.SearchPersonSubjectsResponse = self._dependency.call(
            self._stub.SearchPersonSubjects,
            binding_pb2.SearchPersonSubjectsRequest(
                person_id=person_id,
                subject_type=subject_type,  # type: ignore[arg-type]
                query=query,
                province=province,
            ),
        )
        return list(response.subjects)

    def check_access(self, person_id: str, target: binding_pb2.Target) -> binding_pb2.Identity:
        response: binding_pb2.CheckAccessResponse = self._dependency.call(
            self._stub.CheckAccess,
            binding_pb2.CheckAccessRequest(person_id=person_id, target=target),
        )
        return response.identity
