"""The rules of face-verification tickets (B7, D2, G2): values and pure transitions.

A ticket is created for a purpose and a subject, scanned by the APP, judged by the
provider, and its passed result redeemed once. Every transition here is a pure function of
the ticket and the time, so the service can run it inside `KeyValueStore.update`, where it
may run more than once and must decide alone whether the change is allowed.

Deadlines are in the record and checked against the time passed in: an open ticket
(created or scanned) past `expires_at` is expired, whatever the store still holds; once
passed, `expires_at` becomes the deadline for redeeming the proof.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from etax_platform.clock import CST, from_millis, to_millis
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.pii import mask_document, mask_name

MAX_CAPTURE_BYTES = 2 * 1024 * 1024
_TICKET_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_MAX_SUBJECT_REF = 128
_MAX_NAME = 100
_DOCUMENT_NUMBER = re.compile(r"[0-9A-Z()-]{1,40}")
_MAX_QR_PAYLOAD = 512
_MAX_PROOF = 1024
_QR_PREFIX = "etaxface1"
_PROOF_PREFIX = "faceproof1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# Exact integer conversions (float seconds would not round-trip), so a record read and
# written back unchanged is byte-for-byte the same and the store writes nothing.
def _to_micros(instant: datetime) -> int:
    return (instant - _EPOCH) // timedelta(microseconds=1)


def _from_micros(micros: int) -> datetime:
    return (_EPOCH + timedelta(microseconds=micros)).astimezone(CST)


class TicketState(enum.IntEnum):
    """Same numbers as etax.face.v1.TicketState."""

    CREATED = 1
    SCANNED = 2
    PASSED = 3
    FAILED = 4
    EXPIRED = 5
    CONSUMED = 6


OPEN_STATES = frozenset({TicketState.CREATED, TicketState.SCANNED})
_EXPIRING_STATES = frozenset({*OPEN_STATES, TicketState.PASSED})
FINAL_STATES = frozenset(
    {TicketState.PASSED, TicketState.FAILED, TicketState.EXPIRED, TicketState.CONSUMED}
)


class FailureKind(enum.IntEnum):
    """Same numbers as etax.face.v1.FailureKind."""

    POOR_IMAGE = 1
    MISMATCH = 2
    SERVICE_BUSY = 3
    GO_TO_HALL = 4


class ImageHint(enum.IntEnum):
    """Same numbers as etax.face.v1.ImageHint."""

    UNSPECIFIED = 0
    TOO_DARK = 1
    OTHER_FACE_IN_VIEW = 2
    NO_REQUIRED_MOTION = 3


# B7 user texts (the FAQ, Q4: light, other faces in view, clear motion, busy, the hall).
HINT_MESSAGES = {
    ImageHint.TOO_DARK: "环境光线较暗，请在光线充足处重新拍摄",
    ImageHint.OTHER_FACE_IN_VIEW: "采集背景中出现其他人脸，请确保画面中仅有本人后重试",
    ImageHint.NO_REQUIRED_MOTION: "未检测到指定动作，请按照提示做明显动作后重试",
    ImageHint.UNSPECIFIED: "未能清晰拍摄人脸图像，请按提示调整后重试",
}
MISMATCH_MESSAGE = "人脸识别未通过，请本人重试（还可尝试{left}次）"
BUSY_MESSAGE = "实名核验服务繁忙，请稍后重试"
HALL_MESSAGE = "无法完成实名核验，请前往办税服务大厅线下进行实名信息采集"


@dataclass(frozen=True)
class Identity:
    """A document and the name on it: what the provider compares the face with."""

    document_type: int
    document_number: str
    name: str

    def __repr__(self) -> str:
        # Never a document number or a full name in a log line or a traceback.
        return (
            f"Identity({self.document_type}, {mask_document(self.document_number)}, "
            f"{mask_name(self.name)})"
        )

    __str__ = __repr__

    @staticmethod
    def checked(document_type: int, document_number: str, name: str) -> Identity:
        """Validated and normalised; raises INVALID_DOCUMENT / INVALID_ARGUMENT."""
        number = document_number.strip().upper()
        if document_type <= 0:
            raise invalid("identity.document.type", Reason.INVALID_DOCUMENT)
        if not _DOCUMENT_NUMBER.fullmatch(number):
            raise invalid("identity.document.number", Reason.INVALID_DOCUMENT)
        clean_name = name.strip()
        if not clean_name or len(clean_name) > _MAX_NAME or not clean_name.isprintable():
            raise invalid("identity.name")
        return Identity(document_type, number, clean_name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @staticmethod
    def from_json(text: str) -> Identity:
        return Identity(**json.loads(text))


class Verdict(enum.Enum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    POOR_IMAGE = "poor_image"
    MISMATCH = "mismatch"


@dataclass(frozen=True)
class CaptureVerdict:
    """The provider's judgement of one capture."""

    verdict: Verdict
    hint: ImageHint = ImageHint.UNSPECIFIED


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    hint: ImageHint = ImageHint.UNSPECIFIED
    message: str = ""


@dataclass(frozen=True)
class Ticket:
    """A verification ticket as stored. Identities are sealed (encrypted) by the service."""

    ticket_id: str
    purpose: int
    subject_ref: str
    # None: a subject-less ticket, the APP supplies the identity (D5 face login).
    identity_sealed: str | None
    created_at: datetime
    expires_at: datetime
    max_mismatches: int
    state: TicketState = TicketState.CREATED
    scan_token_hash: str = ""
    mismatches: int = 0
    collected: int = 0
    last_failure: Failure | None = None
    # The capture being judged, and until when it blocks another one.
    capture_id: str = ""
    capture_until: datetime | None = None
    passed_identity_sealed: str = ""
    proof: str = ""
    passed_at: datetime | None = None

    @property
    def subjectless(self) -> bool:
        return self.identity_sealed is None

    def state_at(self, now: datetime) -> TicketState:
        return _state_at(self.state, self.expires_at, now)

    def is_open_at(self, now: datetime) -> bool:
        return self.state_at(now) in OPEN_STATES

    def to_bytes(self) -> bytes:
        record: dict[str, Any] = {
            "ticket_id": self.ticket_id,
            "purpose": self.purpose,
            "subject_ref": self.subject_ref,
            "identity_sealed": self.identity_sealed,
            "created_at": _to_micros(self.created_at),
            "expires_at": _to_micros(self.expires_at),
            "max_mismatches": self.max_mismatches,
            "state": int(self.state),
            "scan_token_hash": self.scan_token_hash,
            "mismatches": self.mismatches,
            "collected": self.collected,
            "last_failure": None
            if self.last_failure is None
            else [
                int(self.last_failure.kind),
                int(self.last_failure.hint),
                self.last_failure.message,
            ],
            "capture_id": self.capture_id,
            "capture_until": None if self.capture_until is None else _to_micros(self.capture_until),
            "passed_identity_sealed": self.passed_identity_sealed,
            "proof": self.proof,
            "passed_at": None if self.passed_at is None else _to_micros(self.passed_at),
        }
        return json.dumps(record, ensure_ascii=False, sort_keys=True).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> Ticket:
        record = orjson.loads(raw)
        failure = record["last_failure"]
        return Ticket(
            ticket_id=record["ticket_id"],
            purpose=record["purpose"],
            subject_ref=record["subject_ref"],
            identity_sealed=record["identity_sealed"],
            created_at=_from_micros(record["created_at"]),
            expires_at=_from_micros(record["expires_at"]),
            max_mismatches=record["max_mismatches"],
            state=TicketState(record["state"]),
            scan_token_hash=record["scan_token_hash"],
            mismatches=record["mismatches"],
            collected=record["collected"],
            last_failure=None if failure is None else _failure(failure),
            capture_id=record["capture_id"],
            capture_until=None
            if record["capture_until"] is None
            else _from_micros(record["capture_until"]),
            passed_identity_sealed=record["passed_identity_sealed"],
            proof=record["proof"],
            passed_at=None if record["passed_at"] is None else _from_micros(record["passed_at"]),
        )


@dataclass(frozen=True)
class TicketView:
    """What the web page and the APP see of a ticket at an instant."""

    ticket_id: str
    state: TicketState
    purpose: int
    expires_at: datetime
    last_failure: Failure | None
    attempts_left: int
    proof: str

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


def view(ticket: Ticket, now: datetime) -> TicketView:
    return _view(
        now,
        ticket_id=ticket.ticket_id,
        stored_state=ticket.state,
        purpose=ticket.purpose,
        expires_at=ticket.expires_at,
        last_failure=ticket.last_failure,
        attempts_left=ticket.max_mismatches - ticket.mismatches,
        proof=ticket.proof,
    )


def stored_view(raw: bytes, now: datetime) -> TicketView:
    """`view` of a stored ticket, read straight from its record: the page and the APP poll
    tickets (GetTicket, WatchTicket), and the rest of a ticket (sealed identities, hashes,
    other instants) is a third of the CPU of a poll in Python."""
    record = orjson.loads(raw)
    failure = record["last_failure"]
    return _view(
        now,
        ticket_id=record["ticket_id"],
        stored_state=TicketState(record["state"]),
        purpose=record["purpose"],
        expires_at=_from_micros(record["expires_at"]),
        last_failure=None if failure is None else _failure(failure),
        attempts_left=record["max_mismatches"] - record["mismatches"],
        proof=record["proof"],
    )


def _view(
    now: datetime,
    *,
    ticket_id: str,
    stored_state: TicketState,
    purpose: int,
    expires_at: datetime,
    last_failure: Failure | None,
    attempts_left: int,
    proof: str,
) -> TicketView:
    state = _state_at(stored_state, expires_at, now)
    return TicketView(
        ticket_id=ticket_id,
        state=state,
        purpose=purpose,
        expires_at=expires_at,
        last_failure=last_failure,
        attempts_left=max(attempts_left, 0),
        proof=proof if state is TicketState.PASSED else "",
    )


def _state_at(state: TicketState, expires_at: datetime, now: datetime) -> TicketState:
    """An open or passed ticket past its deadline is expired, whatever the store holds."""
    if state in _EXPIRING_STATES and now >= expires_at:
        return TicketState.EXPIRED
    return state


def _failure(stored: list[Any]) -> Failure:
    return Failure(FailureKind(stored[0]), ImageHint(stored[1]), stored[2])


# --- input checks ------------------------------------------------------------------------


def check_ticket_id(ticket_id: str) -> str:
    if not _TICKET_ID.fullmatch(ticket_id):
        raise invalid("ticket_id")
    return ticket_id


def check_subject_ref(subject_ref: str) -> str:
    if not subject_ref or len(subject_ref) > _MAX_SUBJECT_REF or not subject_ref.isprintable():
        raise invalid("subject_ref")
    return subject_ref


def check_capture(capture: bytes) -> bytes:
    if not capture or len(capture) > MAX_CAPTURE_BYTES:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            metadata={"field": "capture", "max_bytes": str(MAX_CAPTURE_BYTES)},
        )
    return capture


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- signed payloads ---------------------------------------------------------------------


def _is_millis(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 15


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Signer:
    """HMAC-SHA256 signatures, with a label per use so one kind never passes for another."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the face signing secret needs at least 32 bytes")
        self._secret = secret

    def sign(self, label: str, *parts: str) -> str:
        message = "\x00".join((label, *parts)).encode()
        return _b64(hmac.new(self._secret, message, hashlib.sha256).digest())

    def verify(self, signature: str, label: str, *parts: str) -> bool:
        return hmac.compare_digest(signature.encode(), self.sign(label, *parts).encode())

    def qr_payload(self, ticket_id: str, expires_at: datetime) -> str:
        expires = str(to_millis(expires_at))
        return ".".join((_QR_PREFIX, ticket_id, expires, self.sign("qr", ticket_id, expires)))

    def open_qr_payload(self, payload: str, now: datetime) -> str:
        """The ticket id of a genuine, unexpired QR payload; TICKET_INVALID otherwise."""
        if not payload:
            raise invalid("qr_payload")
        if len(payload) > _MAX_QR_PAYLOAD:
            raise invalid("qr_payload")
        parts = payload.strip().split(".")
        if len(parts) != 4 or parts[0] != _QR_PREFIX:
            raise DomainError(Reason.TICKET_INVALID)
        _, ticket_id, expires, signature = parts
        if not _is_millis(expires) or not self.verify(signature, "qr", ticket_id, expires):
            raise DomainError(Reason.TICKET_INVALID)
        if now >= from_millis(int(expires)):
            raise DomainError(Reason.TICKET_INVALID)
        return ticket_id

    def proof(self, ticket_id: str, purpose: int, subject_ref: str, expires_at: datetime) -> str:
        expires = str(to_millis(expires_at))
        signature = self.sign("proof", ticket_id, str(purpose), subject_ref, expires)
        return ".".join((_PROOF_PREFIX, ticket_id, expires, signature))

    def open_proof(self, proof: str, purpose: int, subject_ref: str, now: datetime) -> str:
        """The ticket id of a genuine, unexpired proof for this purpose and subject."""
        if not proof or len(proof) > _MAX_PROOF:
            raise invalid("proof")
        parts = proof.split(".")
        if len(parts) != 4 or parts[0] != _PROOF_PREFIX or not _is_millis(parts[2]):
            raise DomainError(Reason.TICKET_INVALID)
        _, ticket_id, expires, signature = parts
        # Another purpose or subject changes the signed text: the same failure as tampering.
        if not self.verify(signature, "proof", ticket_id, str(purpose), subject_ref, expires):
            raise DomainError(Reason.TICKET_INVALID)
        if now >= from_millis(int(expires)):
            raise DomainError(Reason.TICKET_INVALID)
        return ticket_id


# --- transitions -------------------------------------------------------------------------


def new_ticket(
    ticket_id: str,
    *,
    purpose: int,
    subject_ref: str,
    identity_sealed: str | None,
    now: datetime,
    ttl: timedelta,
    max_mismatches: int,
) -> Ticket:
    return Ticket(
        ticket_id=ticket_id,
        purpose=purpose,
        subject_ref=subject_ref,
        identity_sealed=identity_sealed,
        created_at=now,
        expires_at=now + ttl,
        max_mismatches=max_mismatches,
    )


def scanned(ticket: Ticket, scan_token_hash: str, now: datetime) -> Ticket:
    """The APP scanned the QR code. Scanning again hands the ticket to the latest device."""
    if not ticket.is_open_at(now):
        raise DomainError(Reason.TICKET_INVALID)
    return replace(ticket, state=TicketState.SCANNED, scan_token_hash=scan_token_hash)


def capture_started(
    ticket: Ticket, scan_token_hash: str, capture_id: str, now: datetime, hold: timedelta
) -> Ticket:
    """Reserves the ticket for one capture, so mismatches cannot be raced past the limit."""
    if (
        not ticket.is_open_at(now)
        or ticket.state is not TicketState.SCANNED
        or not hmac.compare_digest(ticket.scan_token_hash, scan_token_hash)
    ):
        raise DomainError(Reason.TICKET_INVALID)
    if ticket.capture_id and ticket.capture_until is not None and now < ticket.capture_until:
        raise DomainError(
            Reason.STATE_CONFLICT,
            "上一次人脸采集正在核验中，请稍候",
            {"field": "ticket_id"},
        )
    return replace(ticket, capture_id=capture_id, capture_until=now + hold)


def _released(ticket: Ticket, capture_id: str) -> Ticket:
    if ticket.capture_id != capture_id:
        return ticket
    return replace(ticket, capture_id="", capture_until=None)


def capture_abandoned(ticket: Ticket, capture_id: str) -> Ticket:
    """The capture was not judged (a fault of ours): nothing counted, the ticket free."""
    return _released(ticket, capture_id)


def capture_busy(ticket: Ticket, capture_id: str, now: datetime) -> Ticket:
    """B7: the provider is busy. The ticket stays open; nothing is counted."""
    ticket = _released(ticket, capture_id)
    if not ticket.is_open_at(now):
        return ticket
    return replace(ticket, last_failure=Failure(FailureKind.SERVICE_BUSY, message=BUSY_MESSAGE))


def capture_judged(
    ticket: Ticket,
    capture_id: str,
    verdict: CaptureVerdict,
    now: datetime,
    *,
    proof: str,
    proof_expires_at: datetime,
    passed_identity_sealed: str,
) -> Ticket:
    """Records the provider's verdict (B7) if the ticket is still open at `now`.

    A verdict is recorded even if another capture took over the ticket meanwhile, so no
    mismatch is ever lost; a ticket that expired or ended in between stays as it is.
    """
    ticket = _released(ticket, capture_id)
    if not ticket.is_open_at(now):
        return ticket
    if verdict.verdict is Verdict.PASS:
        return replace(
            ticket,
            state=TicketState.PASSED,
            last_failure=None,
            proof=proof,
            expires_at=proof_expires_at,
            passed_at=now,
            passed_identity_sealed=passed_identity_sealed,
        )
    if verdict.verdict is Verdict.POOR_IMAGE:
        failure = Failure(FailureKind.POOR_IMAGE, verdict.hint, HINT_MESSAGES[verdict.hint])
        return replace(ticket, last_failure=failure)
    mismatches = ticket.mismatches + 1
    left = ticket.max_mismatches - mismatches
    if left <= 0:
        return replace(
            ticket,
            state=TicketState.FAILED,
            mismatches=mismatches,
            last_failure=Failure(FailureKind.GO_TO_HALL, message=HALL_MESSAGE),
        )
    failure = Failure(FailureKind.MISMATCH, message=MISMATCH_MESSAGE.format(left=left))
    return replace(ticket, mismatches=mismatches, last_failure=failure)


def redeemed(
    ticket: Ticket, proof: str, purpose: int, subject_ref: str, now: datetime
) -> tuple[Ticket, int]:
    """Consumes a passed ticket's proof once; returns it and the uncollected mismatches."""
    if (
        ticket.state_at(now) is not TicketState.PASSED
        or not hmac.compare_digest(ticket.proof.encode(), proof.encode())
        or ticket.purpose != purpose
        or not hmac.compare_digest(ticket.subject_ref.encode(), subject_ref.encode())
    ):
        raise DomainError(Reason.TICKET_INVALID)
    uncollected = ticket.mismatches - ticket.collected
    return (
        replace(ticket, state=TicketState.CONSUMED, collected=ticket.mismatches),
        uncollected,
    )


def failures_collected(ticket: Ticket, subject_ref: str) -> tuple[Ticket, int]:
    """Hands out the mismatches not handed out before (E1 counts each exactly once)."""
    if not hmac.compare_digest(ticket.subject_ref.encode(), subject_ref.encode()):
        raise DomainError(Reason.TICKET_INVALID)
    new = ticket.mismatches - ticket.collected
    if new == 0:
        return ticket, 0
    return replace(ticket, collected=ticket.mismatches), new
