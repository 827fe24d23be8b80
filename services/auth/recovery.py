"""Recovery from the login page, for persons who cannot log in (C5, E1, Q5, Q11, Q16, Q17,
Q19, Q22).

- Forgot password (忘记密码): account -> an SMS code to the person's phone, or a face check
  (扫码刷脸, the only way when the phone is empty, Q17) -> a new password under C1. Codes
  and face checks count for lockout as at login. The new password revokes every session of
  the person and clears the password lock (a face check clears every level).
- Recover phone (找回手机号码, Q5, Q22): account + personal password (a counted password
  attempt), then a code sent (SmsService.SendCode, PHONE_RECOVERY) to the new phone; the
  number is taken over per C4 and becomes the default. The new phone's code proves the
  phone, not the person, so it does not count for the person's lockout.
- Self-unlock (E1): account -> a face check -> every level unlocked, unless face itself
  is locked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from etax_platform.clock import Clock
from etax_platform.db import Database
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.identifiers import normalize_phone
from etax_platform.pii import mask_name, mask_phone
from services.auth import metrics
from services.auth.audit import AuditEvent, AuditLog, mask_account
from services.auth.checks import Checks, require_code
from services.auth.credentials import PasswordCheck
from services.auth.dependencies import FaceChallenge, SmsCodes
from services.auth.domain import Channel, Purpose
from services.auth.flows import Flow, Flows
from services.auth.lockout import FACE, PASSWORD, Lockout
from services.auth.lookup import AccountLookup
from services.auth.passwords import PasswordHasher, check_policy
from services.auth.sessions import Sessions
from services.auth.steps import CodeContact, PersonSteps, SentToPhone
from services.auth.storage import AccountStore, PhoneClaim


@dataclass(frozen=True)
class StartedReset:
    reset_id: str
    masked_phone: str
    phone_empty: bool
    expires_at: datetime
    # B6: no phone, the code goes to this email.
    masked_email: str = ""


def _event(flow: Flow, method: str | None = None) -> dict[str, object]:
    return {
        "person_id": flow.person_id,
        "province": flow.province or None,
        "method": method,
        "masked_account": flow.masked_account or None,
    }


class Recovery:
    def __init__(
        self,
        *,
        database: Database,
        accounts: AccountStore,
        lookup: AccountLookup,
        passwords: PasswordCheck,
        hasher: PasswordHasher,
        checks: Checks,
        steps: PersonSteps,
        lockout: Lockout,
        sms: SmsCodes,
        sessions: Sessions,
        resets: Flows,
        recoveries: Flows,
        unlocks: Flows,
        audit: AuditLog,
        clock: Clock,
    ) -> None:
        self._db = database
        self._accounts = accounts
        self._lookup = lookup
        self._passwords = passwords
        self._hasher = hasher
        self._checks = checks
        self._steps = steps
        self._lockout = lockout
        self._sms = sms
        self._sessions = sessions
        self._resets = resets
        self._recoveries = recoveries
        self._unlocks = unlocks
        self._audit = audit
        self._clock = clock

    # --- forgot password (C5) --------------------------------------------------------------

    def start_reset(self, account: str, province: str) -> StartedReset:
        with self._audit.attempt(
            "password_reset.start", province=province or None, masked_account=mask_account(account)
        ) as event:
            found = self._lookup.resolve(account)
            event.person_id = found.person.person_id
            flow = self._resets.create(
                person_id=found.person.person_id,
                province=province,
                masked_name=mask_name(found.person.name),
                masked_account=event.masked_account or "",
            )
        contact = CodeContact.of(found)
        return StartedReset(
            flow.flow_id,
            contact.masked_phone,
            contact.phone is None,
            flow.expires_at,
            contact.masked_email,
        )

    def send_reset_code(self, reset_id: str) -> SentToPhone:
        flow = self._resets.load(reset_id)
        with self._audit.attempt("password_reset.send_code", **_event(flow, "sms_code")):
            return self._steps.send_code(self._resets, flow, Purpose.PASSWORD_RESET, "reset_id")

    def start_reset_face(self, reset_id: str) -> FaceChallenge:
        flow = self._resets.load(reset_id)
        return self._steps.face_ticket(self._resets, flow, Purpose.PASSWORD_RESET)

    def complete_reset(
        self, reset_id: str, proof_kind: str | None, proof: str, new_password: str
    ) -> None:
        """proof_kind: "code", "face_proof" or None (neither given)."""
        check_policy(new_password, "new_password")
        flow = self._resets.load(reset_id)
        with self._audit.attempt(
            "password.reset", **_event(flow, "face" if proof_kind == "face_proof" else "sms_code")
        ) as event:
            claim: PhoneClaim | None = None
            proven_by = flow.proven_by
            if not proven_by:
                if proof_kind == "code":
                    claim = self._prove_code(flow, proof, event)
                    proven_by = "sms"
                elif proof_kind == "face_proof":
                    self._steps.pass_face(flow, proof, Purpose.PASSWORD_RESET, event)
                    proven_by = "face"
                else:
                    raise invalid("code", message="请输入短信验证码或完成人脸识别")
                # Remembered, so a later failure here does not spend another code or face.
                self._resets.set(reset_id, proven_by=proven_by)
            event.method = "face" if proven_by == "face" else "sms_code"
            new_hash = self._hasher.hash(new_password)
            now = self._clock.now()
            with self._db.transaction() as session:
                if not self._accounts.reset_password_in(session, flow.person_id, new_hash, now):
                    raise self._resets.invalid()
                if claim is not None:
                    self._accounts.claim_phone_in(session, flow.person_id, claim, now)
                live = self._sessions.revoke_person_in(session, flow.person_id, "password_reset")
                self._audit.insert(session, event)
            self._sessions.revoked(live)
            metrics.sessions_revoked("password_reset", len(live))
            self._resets.consume(reset_id)
        if proven_by == "sms":
            # E1: forgot password clears the password level (face cleared every level).
            had_lock = self._lockout.status(flow.person_id, PASSWORD) is not None
            self._lockout.unlock_after_password_reset(flow.person_id)
            if had_lock:
                self._audit.record(
                    AuditEvent(
                        "lockout.unlock",
                        person_id=flow.person_id,
                        method="password",
                        detail={"by": "password_reset"},
                    )
                )

    def _prove_code(self, flow: Flow, code: str, event: AuditEvent) -> PhoneClaim | None:
        require_code(code)
        if not flow.verification_id:
            raise DomainError(Reason.STATE_CONFLICT, "请先获取验证码", {"field": "code"})
        verified = self._checks.sms_code(
            flow.person_id, flow.verification_id, code, Purpose.PASSWORD_RESET, event
        )
        if self._accounts.recipient_index(verified.recipient) != flow.recipient_index:
            raise self._resets.invalid()
        if "@" in verified.recipient:  # B6: an email code claims no phone
            return None
        # C4: the SMS check re-affirms the person's hold on the phone.
        return PhoneClaim(verified.recipient, verified.verified_at or self._clock.now())

    # --- recover phone (Q5, Q11, Q22) ------------------------------------------------------

    def start_phone_recovery(self, account: str, password: str, province: str) -> Flow:
        if not password:
            raise invalid("password", message="请输入个人用户密码")
        with self._audit.attempt(
            "phone_recovery.start",
            province=province or None,
            method="password",
            masked_account=mask_account(account),
        ) as event:
            found = self._lookup.resolve(account)
            person = found.person
            event.person_id = person.person_id
            self._checks.password(
                person.person_id, lambda: self._passwords.matches(person, password), event
            )
            return self._recoveries.create(
                person_id=person.person_id,
                province=province,
                masked_account=event.masked_account or "",
            )

    def complete_phone_recovery(
        self, recovery_id: str, raw_phone: str, verification_id: str, code: str
    ) -> str:
        phone = normalize_phone(raw_phone)
        if not verification_id or len(verification_id) > 64:
            raise invalid("verification_id", message="请先获取验证码")
        require_code(code)
        flow = self._recoveries.load(recovery_id)
        with self._audit.attempt("phone.recover", **_event(flow, "sms_code")) as event:
            verified = self._sms.verify(verification_id, code, Purpose.PHONE_RECOVERY)
            if verified.channel != Channel.SMS or verified.recipient != phone:
                raise DomainError(
                    Reason.CODE_INVALID, "验证码不是发送到该号码的，请重新获取", {"field": "phone"}
                )
            previous = self._accounts.holder_of_phone(phone)
            taken = previous is not None and previous != flow.person_id
            event.detail["takeover"] = taken
            now = self._clock.now()
            with self._db.transaction() as session:
                held = self._accounts.recover_phone_in(
                    session, flow.person_id, phone, verified.verified_at or now, now
                )
                if held is None:
                    raise DomainError(
                        Reason.STATE_CONFLICT, "该手机号码刚被他人验证绑定，请重新获取验证码后再试"
                    )
                self._audit.insert(session, event)
                if previous is not None and taken:
                    # C4: the previous holder lost the number.
                    self._audit.insert(session, AuditEvent("phone.taken_over", person_id=previous))
            self._recoveries.consume(recovery_id)
        return mask_phone(phone)

    # --- self-unlock (E1) ------------------------------------------------------------------

    def start_face_unlock(self, account: str, province: str) -> tuple[str, FaceChallenge]:
        with self._audit.attempt(
            "face_unlock.start",
            province=province or None,
            method="face",
            masked_account=mask_account(account),
        ) as event:
            found = self._lookup.resolve(account)
            event.person_id = found.person.person_id
            self._checks.ensure_open(found.person.person_id, FACE)
            flow = self._unlocks.create(
                person_id=found.person.person_id,
                province=province,
                masked_account=event.masked_account or "",
            )
            return flow.flow_id, self._steps.face_ticket(self._unlocks, flow, Purpose.UNLOCK)

    def complete_face_unlock(self, unlock_id: str, proof: str) -> None:
        flow = self._unlocks.load(unlock_id)
        with self._audit.attempt("face_unlock.complete", **_event(flow, "face")) as event:
            self._steps.pass_face(flow, proof, Purpose.UNLOCK, event)
            self._unlocks.consume(unlock_id)
