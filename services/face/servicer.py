"""gRPC servicers of etax.face.v1: protobuf in, domain values to the service, protobuf out."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import cast

import grpc
from etax.common.v1 import types_pb2
from etax.face.v1 import face_pb2, face_pb2_grpc

from etax_platform.clock import to_timestamp
from etax_platform.errors import Reason, invalid
from services.face.domain import Identity, TicketView
from services.face.service import FaceService

_PURPOSES = frozenset(types_pb2.VerificationPurpose.values()) - {0}
_DOCUMENT_TYPES = frozenset(types_pb2.DocumentType.values()) - {0}


def _purpose(value: int) -> int:
    if value not in _PURPOSES:
        raise invalid("purpose")
    return value


def _identity(message: types_pb2.NamedDocument, field_name: str = "identity") -> Identity | None:
    """None for an absent or all-empty identity; a checked Identity otherwise."""
    document = message.document
    if not message.name and not document.number and not document.type:
        return None
    if document.type not in _DOCUMENT_TYPES:
        raise invalid(f"{field_name}.document.type", Reason.INVALID_DOCUMENT)
    return Identity.checked(int(document.type), document.number, message.name)


def _named_document(identity: Identity) -> types_pb2.NamedDocument:
    return types_pb2.NamedDocument(
        document=types_pb2.Document(
            type=cast(types_pb2.DocumentType, identity.document_type),
            number=identity.document_number,
        ),
        name=identity.name,
    )


def _ticket(view: TicketView) -> face_pb2.Ticket:
    ticket = face_pb2.Ticket(
        ticket_id=view.ticket_id,
        state=cast(face_pb2.TicketState, int(view.state)),
        purpose=cast(types_pb2.VerificationPurpose, view.purpose),
        expires_at=to_timestamp(view.expires_at),
        attempts_left=view.attempts_left,
        proof=view.proof,
    )
    if view.last_failure is not None:
        ticket.last_failure.CopyFrom(
            face_pb2.Failure(
                kind=cast(face_pb2.FailureKind, int(view.last_failure.kind)),
                hint=cast(face_pb2.ImageHint, int(view.last_failure.hint)),
                message=view.last_failure.message,
            )
        )
    return ticket


class FaceServicer(face_pb2_grpc.FaceServiceServicer):  # type: ignore[misc]
    """The public side: the web page follows a ticket, the APP scans and submits."""

    def __init__(self, service: FaceService, stopping: Callable[[], threading.Event]) -> None:
        self._service = service
        # The host's stopping event, looked up when a stream starts (the host is built
        # after its servicers).
        self._stopping = stopping

    def GetTicket(
        self, request: face_pb2.GetTicketRequest, context: grpc.ServicerContext
    ) -> face_pb2.GetTicketResponse:
        return face_pb2.GetTicketResponse(
            ticket=_ticket(self._service.get_ticket(request.ticket_id))
        )

    def WatchTicket(
        self, request: face_pb2.WatchTicketRequest, context: grpc.ServicerContext
    ) -> Iterator[face_pb2.WatchTicketResponse]:
        views = self._service.watch_ticket(
            request.ticket_id, stopping=self._stopping(), active=context.is_active
        )
        for view in views:
            yield face_pb2.WatchTicketResponse(ticket=_ticket(view))

    def ScanTicket(
        self, request: face_pb2.ScanTicketRequest, context: grpc.ServicerContext
    ) -> face_pb2.ScanTicketResponse:
        scan = self._service.scan_ticket(request.qr_payload)
        return face_pb2.ScanTicketResponse(
            ticket_id=scan.ticket_id,
            purpose=cast(types_pb2.VerificationPurpose, scan.purpose),
            masked_name=scan.masked_name,
            scan_token=scan.scan_token,
            identity_required=scan.identity_required,
            expires_at=to_timestamp(scan.expires_at),
        )

    def SubmitCapture(
        self, request: face_pb2.SubmitCaptureRequest, context: grpc.ServicerContext
    ) -> face_pb2.SubmitCaptureResponse:
        identity = _identity(request.identity) if request.HasField("identity") else None
        view = self._service.submit_capture(
            request.ticket_id, request.scan_token, request.capture, identity
        )
        return face_pb2.SubmitCaptureResponse(ticket=_ticket(view))


class InternalFaceServicer(face_pb2_grpc.InternalFaceServiceServicer):  # type: ignore[misc]
    """For auth: create tickets, redeem proofs, collect failures, check identities."""

    def __init__(self, service: FaceService) -> None:
        self._service = service

    def CreateTicket(
        self, request: face_pb2.CreateTicketRequest, context: grpc.ServicerContext
    ) -> face_pb2.CreateTicketResponse:
        identity = _identity(request.identity) if request.HasField("identity") else None
        created = self._service.create_ticket(
            _purpose(request.purpose), request.subject_ref, identity
        )
        return face_pb2.CreateTicketResponse(
            ticket_id=created.ticket_id,
            qr_payload=created.qr_payload,
            expires_at=to_timestamp(created.expires_at),
        )

    def RedeemProof(
        self, request: face_pb2.RedeemProofRequest, context: grpc.ServicerContext
    ) -> face_pb2.RedeemProofResponse:
        redeemed = self._service.redeem_proof(
            request.proof, _purpose(request.purpose), request.subject_ref
        )
        return face_pb2.RedeemProofResponse(
            ticket_id=redeemed.ticket_id,
            verified_at=to_timestamp(redeemed.verified_at),
            identity=_named_document(redeemed.identity),
            uncollected_failures=redeemed.uncollected_failures,
        )

    def CollectFailures(
        self, request: face_pb2.CollectFailuresRequest, context: grpc.ServicerContext
    ) -> face_pb2.CollectFailuresResponse:
        collected = self._service.collect_failures(request.ticket_id, request.subject_ref)
        return face_pb2.CollectFailuresResponse(
            new_failures=collected.new_failures,
            state=cast(face_pb2.TicketState, int(collected.state)),
        )

    def CheckIdentity(
        self, request: face_pb2.CheckIdentityRequest, context: grpc.ServicerContext
    ) -> face_pb2.CheckIdentityResponse:
        identity = _identity(request.identity)
        if identity is None:
            raise invalid("identity")
        return face_pb2.CheckIdentityResponse(match=self._service.check_identity(identity))
