"""The second steps every flow of a known person shares (login, password reset, unlock):
a code to the person's default phone, a face ticket bound to the flow and its proof."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from etax_platform.errors import DomainError, Reason
from etax_platform.pii import mask_phone
from services.auth.audit import AuditEvent
from services.auth.checks import Checks
from services.auth.dependencies import FaceChallenge, FaceChecks, SmsCodes
from services.auth.domain import Purpose
from services.auth.flows import Flow, Flows
from services.auth.lockout import FACE, SMS_CODE
from services.auth.storage import AccountStore


@dataclass(frozen=True)
class SentToPhone:
    masked_phone: str
    code_expires_at: datetime | None


class PersonSteps:
    def __init__(
        self, *, accounts: AccountStore, checks: Checks, sms: SmsCodes, face: FaceChecks
    ) -> None:
        self._accounts = accounts
        self._checks = checks
        self._sms = sms
        self._face = face

    def send_code(self, flows: Flows, flow: Flow, purpose: Purpose, field: str) -> SentToPhone:
        """A code to the person's default phone, remembered in the flow with that phone."""
        phone = self._accounts.default_phone(flow.person_id)
        if phone is None:
            # C4: the phone went to another person; scan verification instead (D4, Q17).
            raise DomainError(Reason.PHONE_EMPTY, metadata={"field": field})
        self._checks.ensure_open(flow.person_id, SMS_CODE)
        sent = self._sms.send(phone, purpose)
        flows.set(
            flow.flow_id,
            verification_id=sent.verification_id,
            phone_index=self._accounts.phone_index(phone),
        )
        return SentToPhone(mask_phone(phone), sent.expires_at)

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
