"""The second steps every flow of a known person shares (login, password reset, unlock):
a code to the person's default phone (or, B6, their email when they have no phone), a face
ticket bound to the flow and its proof."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from etax_platform.errors import DomainError, Reason
from etax_platform.pii import mask_email, mask_phone
from services.auth.audit import AuditEvent
from services.auth.checks import Checks
from services.auth.dependencies import FaceChallenge, FaceChecks, SmsCodes
from services.auth.domain import Purpose
from services.auth.flows import Flow, Flows
from services.auth.lockout import FACE, SMS_CODE
from services.auth.storage import AccountStore, LoginCandidate

SMS_STEP = "sms"
SCAN_STEP = "scan"
EMAIL_STEP = "email"


@dataclass(frozen=True)
class CodeContact:
    """Where a person's login and reset codes go: the default phone (D2, C3) or, for an
    overseas person registered by email without a phone, that email (B6)."""

    phone: str | None
    email: str | None

    @staticmethod
    def of(candidate: LoginCandidate) -> CodeContact:
        return CodeContact(candidate.default_phone, candidate.person.email)

    @property
    def recipient(self) -> str | None:
        return self.phone or self.email

    @property
    def second_steps(self) -> tuple[str, ...]:
        """D4, Q19: no phone (and no email) offers scan verification only."""
        if self.phone is not None:
            return (SMS_STEP, SCAN_STEP)
        if self.email is not None:
            return (EMAIL_STEP, SCAN_STEP)
        return (SCAN_STEP,)

    @property
    def masked_phone(self) -> str:
        return "" if self.phone is None else mask_phone(self.phone)

    @property
    def masked_email(self) -> str:
        return "" if self.phone is not None or self.email is None else mask_email(self.email)


@dataclass(frozen=True)
class SentToPhone:
    masked_phone: str
    code_expires_at: datetime | None
    # B6: the code went to this email instead (no phone).
    masked_email: str = ""


class PersonSteps:
    def __init__(
        self, *, accounts: AccountStore, checks: Checks, sms: SmsCodes, face: FaceChecks
    ) -> None:
        self._accounts = accounts
        self._checks = checks
        self._sms = sms
        self._face = face

    def contact(self, person_id: str) -> CodeContact:
        person = self._accounts.person(person_id)
        return CodeContact(
            self._accounts.default_phone(person_id), None if person is None else person.email
        )

    def send_code(self, flows: Flows, flow: Flow, purpose: Purpose, field: str) -> SentToPhone:
        """A code to the person's default phone (B6: or email), remembered in the flow with
        where it went. E1 and E2 are the same for both: the code level, the sends per
        recipient."""
        contact = self.contact(flow.person_id)
        recipient = contact.recipient
        if recipient is None:
            # C4: the phone went to another person; scan verification instead (D4, Q17).
            raise DomainError(Reason.PHONE_EMPTY, metadata={"field": field})
        self._checks.ensure_open(flow.person_id, SMS_CODE)
        sent = self._sms.send(recipient, purpose)
        flows.set(
            flow.flow_id,
            verification_id=sent.verification_id,
            recipient_index=self._accounts.recipient_index(recipient),
        )
        return SentToPhone(contact.masked_phone, sent.expires_at, contact.masked_email)

    def face_ticket(self, flows: Flows, flow: Flow, purpose: Purpose) -> FaceChallenge:
        """A face ticket for the flow; the one it replaces has its mismatches counted first.
        The proof is bound to the flow, not the person (docs/face.md)."""
        self._checks.ensure_open(flow.person_id, FACE)
        self._checks.collect_previous(flow.person_id, flow.face_ticket_id, flow.flow_id)
        self._checks.ensure_open(flow.person_id, FACE)
        person = self._accounts.person(flow.person_id)
        if person is None:
            raise flows.invalid()
        ticket = self._face.create_ticket(purpose, flow.flow_id, person.document, person.name)
        flows.set(flow.flow_id, face_ticket_id=ticket.ticket_id)
        return ticket

    def pass_face(self, flow: Flow, proof: str, purpose: Purpose, event: AuditEvent) -> None:
        """The flow's face proof redeemed; its mismatches count, a pass unlocks (E1).
        Without a proof, why the face step has not passed."""
        if not proof:
            self._checks.face_not_passed(flow.person_id, flow.face_ticket_id, flow.flow_id, event)
        self._checks.ensure_open(flow.person_id, FACE)
        result = self._face.redeem(proof, purpose, flow.flow_id)
        self._checks.face_passed(flow.person_id, result, event)
