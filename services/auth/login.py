"""Login (A1, A3, D1-D6): step 1 by password, step 2 by SMS code or scan verification, and
the specific subject's login by APP face alone (D5).

Step 1 resolves the account (lookup.py), counts the password attempt (checks.py, E1), then
for enterprise, agent and specific-subject entries refuses overseas-restricted persons
(B6) and asks binding what the person may act as (RELATION_NOT_FOUND passes through). The
outcome is a login challenge in the key-value store (flows.py): person, identity,
province, methods so far, with a short deadline. Step 2 completes the challenge once and
opens the session (sessions.py). Refusals that reveal something about the person
(overseas, relations) come only after the password.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from etax.binding.v1 import binding_pb2
from etax.common.v1 import types_pb2

from etax_platform.clock import Clock
from etax_platform.enterprise_codes import normalize_enterprise_code
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.identifiers import normalize_subject_number
from etax_platform.pii import mask_name
from etax_platform.tokens import AccessClaims
from services.auth import metrics
from services.auth.audit import AuditEvent, AuditLog, detail_of, mask_account
from services.auth.checks import Checks, require_code
from services.auth.credentials import PasswordCheck
from services.auth.dependencies import Bindings, FaceChallenge, FaceChecks
from services.auth.domain import Purpose, require_enterprise_business
from services.auth.flows import Flow, Flows
from services.auth.lookup import AccountLookup
from services.auth.sessions import (
    IssuedSession,
    Principal,
    Sessions,
    decode_identity,
    encode_identity,
)
from services.auth.steps import CodeContact, PersonSteps, SentToPhone
from services.auth.storage import AccountStore, AlsoWrite, PersonRecord, PhoneClaim

# Authentication methods as the access token's amr claim names them (RFC 8176 where it
# has a name).
PASSWORD_METHOD = "pwd"  # noqa: S105 - a method name, not a password
SMS_METHOD = "sms"
EMAIL_METHOD = "email"
FACE_METHOD = "face"
QR_METHOD = "qr"


NATURAL_PERSON = types_pb2.ENTRY_NATURAL_PERSON
ENTERPRISE = types_pb2.ENTRY_ENTERPRISE
AGENT = types_pb2.ENTRY_AGENT
SPECIFIC_SUBJECT = types_pb2.ENTRY_SPECIFIC_SUBJECT
_SUBJECT_TYPES = frozenset(
    {
        types_pb2.SUBJECT_TYPE_CROSS_REGION_INSPECTION,
        types_pb2.SUBJECT_TYPE_CROSS_REGION_TAX_SOURCE,
    }
)


@dataclass(frozen=True)
class LoginTarget:
    """What step 1 asks to act as (D1, D5, D6), validated."""

    entry: int
    enterprise_code: str = ""
    agency_code: str = ""
    client_code: str = ""
    subject_type: int = 0
    subject_number: str = ""

    def to_target(self, province: str) -> binding_pb2.Target:
        return binding_pb2.Target(
            entry=self.entry,  # type: ignore[arg-type]
            enterprise_code=self.enterprise_code,
            agency_code=self.agency_code,
            client_code=self.client_code,
            subject_type=self.subject_type,  # type: ignore[arg-type]
            subject_number=self.subject_number,
            province=province,
        )


def subject_type(value: int, field_name: str = "subject_type") -> int:
    if value not in _SUBJECT_TYPES:
        raise invalid(field_name, message="请选择特定主体类型")
    return value


def subject_number(raw: str, field_name: str = "subject_number") -> str:
    return normalize_subject_number(
        raw, field_name, "请输入正确的统一社会信用代码、纳税人识别号或项目编号"
    )


def subject_query(raw: str, field_name: str = "query") -> str:
    """Part of a subject number for the fuzzy search (D5): upper case, no wildcards."""
    value = raw.strip().upper()
    if len(value) > 64 or not all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in value):
        raise invalid(field_name, message="请输入统一社会信用代码、纳税人识别号或项目编号的一部分")
    return value


def parse_target(
    entry: int,
    enterprise_code: str,
    agency_code: str,
    kind: int,
    number: str,
    *,
    client_code: str = "",
    prefix: str = "",
    subject_pending: bool = False,
    number_field: str = "subject_number",
) -> LoginTarget:
    """The fields each entry needs (field names of StartLoginRequest, or of
    SwitchIdentityRequest.identity with prefix "identity."). subject_pending: a specific
    subject's number may come later (D5 login)."""
    if entry == NATURAL_PERSON:
        return LoginTarget(NATURAL_PERSON)
    if entry == ENTERPRISE:
        # F5: a home-province project number may come with the enterprise.
        return LoginTarget(
            ENTERPRISE,
            enterprise_code=normalize_enterprise_code(enterprise_code, f"{prefix}enterprise_code"),
            subject_type=subject_type(kind, f"{prefix}subject_type") if kind else 0,
            subject_number=subject_number(number, f"{prefix}{number_field}")
            if number.strip()
            else "",
        )
    if entry == AGENT:
        # D6: the login names the agency; the client is chosen by SwitchIdentity.
        client = client_code.strip()
        return LoginTarget(
            AGENT,
            agency_code=normalize_enterprise_code(agency_code, f"{prefix}agency_code"),
            client_code=normalize_enterprise_code(client, f"{prefix}client_code") if client else "",
        )
    if entry == SPECIFIC_SUBJECT:
        # D5: the subject's USCC/TIN or project number (enterprise_code is accepted too);
        # none yet at login: chosen after the password, from the person's own subjects.
        if number.strip():
            chosen = subject_number(number, f"{prefix}{number_field}")
        elif enterprise_code.strip():
            chosen = normalize_enterprise_code(enterprise_code, f"{prefix}enterprise_code")
        elif subject_pending:
            chosen = ""
        else:
            raise invalid(
                f"{prefix}{number_field}",
                message="请输入统一社会信用代码、纳税人识别号或项目编号",
            )
        return LoginTarget(
            SPECIFIC_SUBJECT,
            subject_type=subject_type(kind, f"{prefix}subject_type"),
            subject_number=chosen,
        )
    raise invalid(f"{prefix}entry", message="请选择登录入口")


def identity_for(
    bindings: Bindings, person: PersonRecord, target: LoginTarget, province: str
) -> binding_pb2.Identity:
    """What the person acts as: a natural person always (no call); otherwise binding
    decides, and overseas-restricted persons have no enterprise business (B6)."""
    if target.entry == NATURAL_PERSON:
        return binding_pb2.Identity(entry=NATURAL_PERSON)
    require_enterprise_business(person.overseas_restricted)
    return bindings.check_access(person.person_id, target.to_target(province))


def target_of_identity(identity: binding_pb2.Identity) -> LoginTarget:
    """What SwitchIdentity asks for when given an item of ListMyIdentities back as is."""
    return parse_target(
        identity.entry,
        identity.enterprise_code,
        identity.agency_code,
        identity.subject_type,
        identity.project_number,
        client_code=identity.client_code,
        prefix="identity.",
        number_field="project_number",
    )


@dataclass(frozen=True)
class SecondSteps:
    """What step 2 may be, as the page offers it (D2, D4, B6)."""

    steps: tuple[str, ...]
    masked_phone: str
    phone_empty: bool
    masked_email: str

    @staticmethod
    def of(contact: CodeContact) -> SecondSteps:
        return SecondSteps(
            contact.second_steps,
            contact.masked_phone,
            contact.phone is None,
            contact.masked_email,
        )


@dataclass(frozen=True)
class StartedLogin:
    challenge_id: str
    # Empty while the specific subject is still to be chosen (D5).
    second: SecondSteps
    expires_at: datetime
    subject_required: bool = False


class Logins:
    def __init__(
        self,
        *,
        accounts: AccountStore,
        lookup: AccountLookup,
        passwords: PasswordCheck,
        checks: Checks,
        steps: PersonSteps,
        bindings: Bindings,
        face: FaceChecks,
        sessions: Sessions,
        challenges: Flows,
        audit: AuditLog,
        clock: Clock,
    ) -> None:
        self._accounts = accounts
        self._lookup = lookup
        self._passwords = passwords
        self._checks = checks
        self._steps = steps
        self._bindings = bindings
        self._face = face
        self._sessions = sessions
        self._challenges = challenges
        self._audit = audit
        self._clock = clock

    # --- step 1 ----------------------------------------------------------------------------

    def start(
        self, account: str, password: str, target: LoginTarget, province: str
    ) -> StartedLogin:
        if not password:
            raise invalid("password", message="请输入个人用户密码")
        with self._audit.attempt(
            "login.password",
            entry=target.entry,
            province=province,
            method="password",
            masked_account=mask_account(account),
        ) as event:
            found = self._lookup.resolve(account)
            person = found.person
            event.person_id = person.person_id
            attempt = self._checks.password_attempt(
                person.person_id, lambda: self._passwords.matches(person, password), event
            )
            pending = target.entry == SPECIFIC_SUBJECT and not target.subject_number
            try:
                if pending:
                    # D5: the person chooses among their own subjects first.
                    require_enterprise_business(person.overseas_restricted)
                    identity = ""
                else:
                    chosen = identity_for(self._bindings, person, target, province)
                    event.detail.update(detail_of(chosen))
                    identity = encode_identity(chosen)
            except BaseException:
                self._checks.passed(attempt)  # the password was right all the same
                raise
            # One step: the password's run ends and the challenge is stored.
            challenge = self._checks.passed_creating(
                attempt,
                self._challenges,
                person_id=person.person_id,
                province=province,
                entry=target.entry,
                methods=(PASSWORD_METHOD,),
                masked_name=mask_name(person.name),
                real_name_level=person.real_name_level,
                masked_account=event.masked_account or "",
                identity=identity,
                target=encode_target(target.to_target(province)) if pending else "",
            )
        second = SecondSteps.of(CodeContact.of(found))
        return StartedLogin(
            challenge_id=challenge.flow_id,
            second=SecondSteps((), "", False, "") if pending else second,
            expires_at=challenge.expires_at,
            subject_required=pending,
        )

    # --- D5: the subject, chosen after the password ----------------------------------------

    def _choosing_subject(self, challenge_id: str) -> tuple[Flow, binding_pb2.Target]:
        challenge = self._challenges.load(challenge_id)
        if not challenge.person_id or challenge.identity or not challenge.target:
            raise DomainError(
                Reason.STATE_CONFLICT, "本次登录无需选择特定主体", {"field": "challenge_id"}
            )
        return challenge, decode_target(challenge.target)

    def search_subjects(
        self, challenge_id: str, query: str
    ) -> list[binding_pb2.CrossRegionProject]:
        """D5, Q23: the fuzzy search of the subject number during login, over the subjects
        the person whose password was verified is related to, in the bureau's province.
        Empty: no relation (the page's "required" prompt)."""
        wanted = subject_query(query)
        challenge, target = self._choosing_subject(challenge_id)
        return self._bindings.search_subjects(
            challenge.person_id, target.subject_type, wanted, challenge.province
        )

    def select_subject(self, challenge_id: str, number: str) -> SecondSteps:
        """D5: the chosen subject, if the person may act for it (RELATION_NOT_FOUND)."""
        chosen = subject_number(number)
        challenge, target = self._choosing_subject(challenge_id)
        with self._audit.attempt(
            "login.select_subject", **self._event(challenge, "password")
        ) as event:
            target.subject_number = chosen
            identity = self._bindings.check_access(challenge.person_id, target)
            event.detail.update(detail_of(identity))
            self._challenges.set(challenge_id, identity=encode_identity(identity), target="")
        return SecondSteps.of(self._steps.contact(challenge.person_id))

    def _person_challenge(self, challenge_id: str) -> Flow:
        challenge = self._challenges.load(challenge_id)
        if not challenge.person_id:
            raise DomainError(
                Reason.STATE_CONFLICT, "请使用税务APP扫码完成人脸识别", {"field": "challenge_id"}
            )
        if not challenge.identity:
            raise DomainError(
                Reason.STATE_CONFLICT, "请先选择特定主体编号", {"field": "subject_number"}
            )
        return challenge

    @staticmethod
    def _event(challenge: Flow, method: str) -> dict[str, Any]:
        return {
            "person_id": challenge.person_id or None,
            "entry": challenge.entry,
            "province": challenge.province,
            "method": method,
            "masked_account": challenge.masked_account or None,
        }

    # --- step 2 by SMS code (D2, D4) -------------------------------------------------------

    def send_code(self, challenge_id: str) -> SentToPhone:
        challenge = self._person_challenge(challenge_id)
        with self._audit.attempt("login.send_code", **self._event(challenge, "sms_code")):
            return self._steps.send_code(self._challenges, challenge, Purpose.LOGIN, "challenge_id")

    def complete_with_code(self, challenge_id: str, code: str) -> IssuedSession:
        require_code(code)
        # One step: the challenge, checked, and the code attempt counted for its person.
        challenge, counted = self._checks.code_attempt(self._challenges, challenge_id)
        with self._audit.attempt("login.complete", **self._event(challenge, "sms_code")) as event:
            if isinstance(counted, DomainError):
                raise counted  # locked
            verified = self._checks.sms_code_of(
                counted, challenge.verification_id, code, Purpose.LOGIN, event
            )
            if self._accounts.recipient_index(verified.recipient) != challenge.recipient_index:
                self._checks.passed(counted)
                raise self._challenges.invalid()
            # One step: the code's run ends and the challenge is taken (once).
            challenge = self._checks.passed_consuming(counted, self._challenges, challenge_id)
            now = self._clock.now()
            if "@" in verified.recipient:  # B6: an email code
                return self._open(challenge, EMAIL_METHOD, event)
            # C4: passing an SMS check re-affirms the person's hold on that phone.
            claim = PhoneClaim(verified.recipient, verified.verified_at or now)
            return self._open(
                challenge,
                SMS_METHOD,
                event,
                also=self._accounts.phone_claim_with(challenge.person_id, claim, now),
            )

    # --- step 2 by scan verification (D2, Q14) ---------------------------------------------

    def start_face(self, challenge_id: str) -> FaceChallenge:
        challenge = self._person_challenge(challenge_id)
        return self._steps.face_ticket(self._challenges, challenge, Purpose.LOGIN)

    def complete_with_face(self, challenge_id: str, proof: str) -> IssuedSession:
        challenge = self._challenges.load(challenge_id)
        if not challenge.person_id:
            return self._complete_subject_face(challenge, proof)
        with self._audit.attempt("login.complete", **self._event(challenge, "face")) as event:
            self._steps.pass_face(challenge, proof, Purpose.LOGIN, event)
            challenge = self._challenges.consume(challenge_id)
            return self._open(challenge, FACE_METHOD, event)

    # --- D5: specific subject by APP face alone --------------------------------------------

    def start_subject_face(
        self, kind: int, number: str, province: str
    ) -> tuple[str, FaceChallenge]:
        target = LoginTarget(
            SPECIFIC_SUBJECT, subject_type=subject_type(kind), subject_number=subject_number(number)
        )
        challenge = self._challenges.create(
            province=province,
            entry=SPECIFIC_SUBJECT,
            target=encode_target(target.to_target(province)),
        )
        # Subject-less: the APP supplies the identity with its capture.
        ticket = self._face.create_ticket(Purpose.SPECIFIC_SUBJECT_LOGIN, challenge.flow_id, None)
        self._challenges.set(challenge.flow_id, face_ticket_id=ticket.ticket_id)
        metrics.LOGINS_STARTED.labels("specific_subject", "ok", "").inc()
        return challenge.flow_id, ticket

    def _complete_subject_face(self, challenge: Flow, proof: str) -> IssuedSession:
        with self._audit.attempt("login.complete", **self._event(challenge, "face")) as event:
            if not proof:
                # Nobody to count the mismatches for: the APP named no registered person.
                self._checks.face_not_passed(
                    None, challenge.face_ticket_id, challenge.flow_id, event
                )
            result = self._face.redeem(proof, Purpose.SPECIFIC_SUBJECT_LOGIN, challenge.flow_id)
            if result.identity is None:
                raise DomainError(Reason.USER_NOT_REGISTERED)
            document, _name = result.identity
            person_id = self._accounts.person_id_for_document(document)
            person = None if person_id is None else self._accounts.person(person_id)
            if person is None:
                raise DomainError(Reason.USER_NOT_REGISTERED)
            event.person_id = person.person_id
            self._checks.face_passed(person.person_id, result, event)
            require_enterprise_business(person.overseas_restricted)
            identity = self._bindings.check_access(
                person.person_id, decode_target(challenge.target)
            )
            event.detail.update(detail_of(identity))
            challenge = self._challenges.consume(challenge.flow_id)
            challenge = replace(
                challenge,
                person_id=person.person_id,
                masked_name=mask_name(person.name),
                real_name_level=person.real_name_level,
                identity=encode_identity(identity),
            )
            return self._open(challenge, FACE_METHOD, event)

    # --- the session -------------------------------------------------------------------------

    def _open(
        self,
        challenge: Flow,
        method: str,
        event: AuditEvent,
        also: AlsoWrite | None = None,
    ) -> IssuedSession:
        identity = decode_identity(challenge.identity)
        event.detail.update(detail_of(identity))
        return self._sessions.open(
            Principal(challenge.person_id, challenge.masked_name, challenge.real_name_level),
            identity,
            challenge.province,
            (*challenge.methods, method),
            event,
            also=also,
        )


def encode_target(target: binding_pb2.Target) -> str:
    return base64.b64encode(target.SerializeToString()).decode()


def decode_target(encoded: str) -> binding_pb2.Target:
    return binding_pb2.Target.FromString(base64.b64decode(encoded))


class Switching:
    """身份切换 (F3, F5, Q27): the same session acting as another enterprise, project or
    agent client the person is related to; binding decides, in the session's province."""

    def __init__(
        self, *, accounts: AccountStore, bindings: Bindings, sessions: Sessions, audit: AuditLog
    ) -> None:
        self._accounts = accounts
        self._bindings = bindings
        self._sessions = sessions
        self._audit = audit

    def switch(self, claims: AccessClaims, target: LoginTarget) -> IssuedSession:
        with self._audit.attempt(
            "identity.switch",
            person_id=claims.person_id,
            session_id=claims.session_id,
            entry=target.entry,
            province=claims.province,
        ) as event:
            person = self._accounts.person(claims.person_id)
            if person is None:
                raise DomainError(Reason.UNAUTHENTICATED)
            identity = identity_for(self._bindings, person, target, claims.province)
            event.detail.update(detail_of(identity))
            return self._sessions.switch(claims, identity, event)
