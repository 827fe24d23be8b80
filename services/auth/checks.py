"""Credential checks that count for lockout (E1), shared by login, the old login and the
recovery flows.

Password and SMS code: `Lockout.begin` counts the attempt *before* the check (that makes
E1 exact under concurrency), a wrong credential then reports the attempts left or the lock
it caused, a right one ends the run, a check that could not be made (a dependency failed)
is abandoned. Face: the face service judges captures, so its mismatches are counted when
auth learns them (RedeemProof's uncollected failures, CollectFailures); a passed check
unlocks every level, unless the mismatches before it had locked face already.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from etax.face.v1 import face_pb2

from etax_platform.errors import DomainError, Reason
from services.auth.audit import AuditEvent, AuditLog
from services.auth.dependencies import FaceChecks, FaceResult, SmsCodes, VerifiedCode
from services.auth.domain import Purpose
from services.auth.flows import Flow, Flows
from services.auth.lockout import FACE, PASSWORD, SMS_CODE, Attempt, Lockout, Method

_CODE_DIGITS = 6


def require_code(code: str, field_name: str = "code") -> str:
    """A 6-digit code, checked before anything is counted."""
    if len(code) != _CODE_DIGITS or not code.isascii() or not code.isdigit():
        raise DomainError(Reason.CODE_INVALID, "请输入6位数字验证码", {"field": field_name})
    return code


class Checks:
    def __init__(
        self, *, lockout: Lockout, sms: SmsCodes, face: FaceChecks, audit: AuditLog
    ) -> None:
        self._lockout = lockout
        self._sms = sms
        self._face = face
        self._audit = audit

    def counted(
        self,
        person_id: str,
        method: Method,
        check: Callable[[], bool],
        event: AuditEvent,
        wrong_message: Callable[[int], str] | None = None,
    ) -> None:
        """Runs one credential check as a counted attempt."""
        attempt = self._lockout.begin(person_id, method)
        self.judged(attempt, check, event, wrong_message)
        self._lockout.succeeded(attempt)

    def judged(
        self,
        attempt: Attempt,
        check: Callable[[], bool],
        event: AuditEvent,
        wrong_message: Callable[[int], str] | None = None,
    ) -> None:
        """The check of an attempt already counted: a wrong credential raises the attempts
        left (or the lock it caused), a check that could not be made is abandoned. A right
        one returns, and the caller ends the run (`passed`, `passed_creating`,
        `passed_consuming`)."""
        try:
            right = check()
        except Exception:
            self._lockout.abandon(attempt)
            raise
        if right:
            return
        event.outcome = "failed"
        error = attempt.failed(None if wrong_message is None else wrong_message(attempt.remaining))
        if error.reason is Reason.AUTH_METHOD_LOCKED:
            self._audit.record(
                event.follow_up("lockout.lock", outcome="locked", reason=error.reason.value)
            )
        raise error

    def password(self, person_id: str, check: Callable[[], bool], event: AuditEvent) -> None:
        self.counted(person_id, PASSWORD, check, event)

    def password_attempt(
        self, person_id: str, check: Callable[[], bool], event: AuditEvent
    ) -> Attempt:
        """A right password whose run the caller still ends (login step 1 does so while
        it stores the challenge)."""
        attempt = self._lockout.begin(person_id, PASSWORD)
        self.judged(attempt, check, event)
        return attempt

    def passed(self, attempt: Attempt) -> None:
        self._lockout.succeeded(attempt)

    def passed_creating(self, attempt: Attempt, flows: Flows, **fields: object) -> Flow:
        return self._lockout.succeeded_creating(attempt, flows, **fields)

    def passed_consuming(self, attempt: Attempt, flows: Flows, flow_id: str) -> Flow:
        return self._lockout.succeeded_consuming(attempt, flows, flow_id)

    def code_attempt(self, flows: Flows, flow_id: str) -> tuple[Flow, Attempt | DomainError]:
        """A person's flow and an SMS-code attempt counted for the person (or the lock that
        refuses it), in one step (Lockout.begin_with_flow)."""
        return self._lockout.begin_with_flow(flows, flow_id, SMS_CODE)

    def sms_code(
        self, person_id: str, verification_id: str, code: str, purpose: Purpose, event: AuditEvent
    ) -> VerifiedCode:
        """A code sent to the person's phone: a wrong one counts (SMS-code level)."""
        attempt = self._lockout.begin(person_id, SMS_CODE)
        verified = self.sms_code_of(attempt, verification_id, code, purpose, event)
        self._lockout.succeeded(attempt)
        return verified

    def sms_code_of(
        self,
        attempt: Attempt,
        verification_id: str,
        code: str,
        purpose: Purpose,
        event: AuditEvent,
    ) -> VerifiedCode:
        """The code of a counted attempt, judged (`judged`): its run is not ended yet."""
        verified: list[VerifiedCode] = []

        def check() -> bool:
            try:
                verified.append(self._sms.verify(verification_id, code, purpose))
            except DomainError as error:
                if error.reason is Reason.CODE_INVALID:
                    return False
                raise
            return True

        self.judged(attempt, check, event, lambda left: f"验证码错误，您还可以尝试{left}次")
        return verified[0]

    def ensure_open(self, person_id: str, method: Method) -> None:
        """AUTH_METHOD_LOCKED now, before a code is sent or a face ticket made for nothing."""
        locked = self._lockout.status(person_id, method)
        if locked is not None:
            raise locked

    def face_passed(self, person_id: str, result: FaceResult, event: AuditEvent) -> None:
        """A redeemed face proof: its earlier mismatches count; then, unless they locked
        face, the pass unlocks every level (E1 self-unlock)."""
        self._lockout.record_failures(person_id, FACE, result.uncollected_failures)
        locked = self._lockout.status(person_id, FACE)
        if locked is not None:
            event.outcome = "failed"
            raise locked
        had_lock = self._lockout.status(person_id, PASSWORD) is not None
        self._lockout.unlock_after_face(person_id)
        if had_lock:
            self._audit.record(event.follow_up("lockout.unlock", detail={"by": "face"}))

    def face_not_passed(
        self, person_id: str | None, ticket_id: str, subject_ref: str, event: AuditEvent
    ) -> NoReturn:
        """The page reports a face step that ended without a proof: the ticket's new
        mismatches count, and the answer says why it did not pass."""
        if not ticket_id:
            raise DomainError(Reason.STATE_CONFLICT, "请先发起人脸识别", {"field": "proof"})
        collected = self._face.collect_failures(ticket_id, subject_ref)
        if person_id and collected.new_failures:
            self.record_face_failures(person_id, collected.new_failures, event)
        if person_id:
            self.ensure_open(person_id, FACE)
        if collected.state == face_pb2.TICKET_STATE_FAILED:
            raise DomainError(Reason.FACE_GO_TO_HALL)
        if collected.state in (face_pb2.TICKET_STATE_EXPIRED, face_pb2.TICKET_STATE_CONSUMED):
            raise DomainError(Reason.TICKET_INVALID, metadata={"field": "proof"})
        if collected.new_failures:
            raise DomainError(
                Reason.FACE_MISMATCH, metadata={"new_failures": str(collected.new_failures)}
            )
        raise DomainError(Reason.STATE_CONFLICT, "人脸识别尚未完成", {"field": "proof"})

    def record_face_failures(self, person_id: str, count: int, event: AuditEvent) -> None:
        before = self._lockout.status(person_id, FACE)
        self._lockout.record_failures(person_id, FACE, count)
        event.outcome = "failed"
        event.detail["face_failures"] = count
        if before is None and self._lockout.status(person_id, FACE) is not None:
            self._audit.record(
                event.follow_up(
                    "lockout.lock", outcome="locked", reason=Reason.AUTH_METHOD_LOCKED.value
                )
            )

    def collect_previous(self, person_id: str, ticket_id: str, subject_ref: str) -> None:
        """A new face ticket replaces one the page gave up on: the old one's mismatches
        count first."""
        if not ticket_id:
            return
        collected = self._face.collect_failures(ticket_id, subject_ref)
        if collected.new_failures:
            event = AuditEvent("login.face", person_id=person_id, method="face")
            self.record_face_failures(person_id, collected.new_failures, event)
            self._audit.record(event)
