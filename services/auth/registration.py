"""Registration (B1-B6) in three steps.

1. start: document rules, the plan (which steps), identity check through the face service.
   The registration lives in the key-value store with a deadline; nothing is written to
   the database, so an abandoned registration never blocks a retry.
2. start_face: a face ticket bound to the registration (skipped when the hall collected
   the person, B2).
3. complete: the code (SMS, or email for overseas persons) and the face proof are redeemed
   and remembered in the registration, so a later failure (a taken username, say) does
   not cost them again; then the person, their phone and username are created in one
   transaction at real-name level 4.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from etax_platform.clock import Clock
from etax_platform.documents import Document
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.identifiers import normalize_email, normalize_phone
from etax_platform.kv import KeyValueStore
from etax_platform.pii import PersonalData
from services.auth import metrics
from services.auth.audit import AuditEvent, AuditLog
from services.auth.dependencies import FaceChallenge, FaceChecks, SmsCodes
from services.auth.domain import (
    LEVEL_FACE_VERIFIED,
    Channel,
    ProvenContact,
    Purpose,
    Registration,
    parse_username,
    plan_registration,
    require_id,
)
from services.auth.passwords import PasswordHasher, check_policy
from services.auth.storage import AccountStore, NewPerson, PhoneClaim

_DOCUMENT = "registration.document_number"
_NAME = "registration.name"
_ID_BYTES = 16
_Change = Callable[[Registration], Registration]


@dataclass(frozen=True)
class StartedRegistration:
    registration_id: str
    face_required: bool
    email_required: bool
    expires_at: datetime


@dataclass(frozen=True)
class Completion:
    """What the person sends to finish (phone or email per the plan)."""

    registration_id: str
    phone: str
    email: str
    verification_id: str
    code: str
    face_proof: str
    password: str
    username: str


@dataclass(frozen=True)
class RegisteredPerson:
    person_id: str
    real_name_level: int


class Registrations:
    def __init__(
        self,
        *,
        accounts: AccountStore,
        kv: KeyValueStore,
        personal_data: PersonalData,
        sms: SmsCodes,
        face: FaceChecks,
        hasher: PasswordHasher,
        clock: Clock,
        ttl: timedelta,
        audit: AuditLog | None = None,
    ) -> None:
        self._accounts = accounts
        self._audit = audit
        self._kv = kv
        self._pd = personal_data
        self._sms = sms
        self._face = face
        self._hasher = hasher
        self._clock = clock
        self._ttl = ttl

    # --- step 1 ------------------------------------------------------------------------

    def start(
        self, document: Document, name: str, *, overseas: bool, province: str
    ) -> StartedRegistration:
        offline_collected = self._accounts.is_offline_collected(document)
        plan = plan_registration(document, overseas=overseas, offline_collected=offline_collected)
        if not self._face.identity_matches(document, name):
            raise DomainError(Reason.IDENTITY_MISMATCH, metadata={"field": "identity.name"})
        if self._accounts.person_id_for_document(document) is not None:
            raise DomainError(Reason.ALREADY_REGISTERED)
        now = self._clock.now()
        registration = Registration(
            registration_id=secrets.token_hex(_ID_BYTES),
            document_type=document.type,
            document_sealed=self._pd.encrypt(document.number, _DOCUMENT),
            name_sealed=self._pd.encrypt(name, _NAME),
            overseas=overseas,
            province=province,
            face_required=plan.face_required,
            expires_at=now + self._ttl,
        )
        created = self._kv.create(
            _key(registration.registration_id), registration.to_bytes(), self._store_ttl
        )
        if created is None:  # 128 random bits collided: not in this universe
            raise RuntimeError("registration id collision")
        return StartedRegistration(
            registration.registration_id,
            plan.face_required,
            plan.email_required,
            registration.expires_at,
        )

    # --- step 2 ------------------------------------------------------------------------

    def start_face(self, registration_id: str) -> FaceChallenge:
        registration = self._load(registration_id)
        if not registration.needs_face():
            raise DomainError(Reason.STATE_CONFLICT, "本次注册无需人脸识别")
        document, name = self._identity(registration)
        return self._face.create_ticket(Purpose.REGISTRATION, registration_id, document, name)

    # --- step 3 ------------------------------------------------------------------------

    def complete(self, request: Completion) -> RegisteredPerson:
        check_policy(request.password)
        username = parse_username(request.username) if request.username else None
        registration = self._load(request.registration_id)
        channel, recipient = self._contact(registration, request)
        document, name = self._identity(registration)
        # Cheap refusals first, so a code or a face proof is not spent on a lost cause.
        if self._accounts.person_id_for_document(document) is not None:
            self._forget(request.registration_id)
            raise DomainError(Reason.ALREADY_REGISTERED)
        if username is not None and self._accounts.username_owner(username.key) is not None:
            raise DomainError(Reason.USERNAME_TAKEN, metadata={"field": "username"})

        registration = self._prove_contact(registration, request, channel, recipient)
        registration = self._prove_face(registration, request.face_proof)
        assert registration.contact is not None  # proven above

        password_hash = self._hasher.hash(request.password)
        phone = (
            None
            if channel == Channel.EMAIL
            else PhoneClaim(recipient, registration.contact.verified_at, make_default=True)
        )
        # C4: a phone another person holds goes to the newcomer; the audit names both.
        previous = (
            self._accounts.holder_of_phone(recipient)
            if phone is not None and self._audit is not None
            else None
        )
        person_id = self._create(
            NewPerson(
                document=document,
                name=name,
                overseas=registration.overseas,
                real_name_level=LEVEL_FACE_VERIFIED,
                registered_province=registration.province,
                origin="registration",
                password_hash=password_hash,
                face_verified_at=registration.face_verified_at,
                email=recipient if channel == Channel.EMAIL else None,
                username=None if username is None else username.display,
                username_key=None if username is None else username.key,
            ),
            phone,
            request.registration_id,
        )
        self._forget(request.registration_id)
        metrics.REGISTRATIONS.labels(
            "online", metrics.document_kind(document.type), str(LEVEL_FACE_VERIFIED)
        ).inc()
        if self._audit is not None:
            self._audit.record(
                AuditEvent(
                    "person.register",
                    person_id=person_id,
                    province=registration.province,
                    detail={"takeover": previous is not None},
                )
            )
            if previous is not None:
                self._audit.record(AuditEvent("phone.taken_over", person_id=previous))
        return RegisteredPerson(person_id, LEVEL_FACE_VERIFIED)

    def _create(self, person: NewPerson, phone: PhoneClaim | None, registration_id: str) -> str:
        try:
            person_id, _held = self._accounts.create_person(person, phone, self._clock.now())
            return person_id
        except DomainError as error:
            if error.reason == Reason.ALREADY_REGISTERED:
                self._forget(registration_id)
            raise

    def _contact(self, registration: Registration, request: Completion) -> tuple[Channel, str]:
        """B6: overseas persons prove an email; everybody else a mainland phone."""
        if registration.overseas:
            if not request.email:
                raise invalid("email", Reason.INVALID_EMAIL, "境外自然人注册请填写邮箱地址")
            return Channel.EMAIL, normalize_email(request.email)
        if not request.phone:
            raise invalid("phone", Reason.INVALID_PHONE, "请填写手机号码")
        return Channel.SMS, normalize_phone(request.phone)

    def _prove_contact(
        self, registration: Registration, request: Completion, channel: Channel, recipient: str
    ) -> Registration:
        index = (
            self._accounts.email_index(recipient)
            if channel == Channel.EMAIL
            else self._accounts.phone_index(recipient)
        )
        if registration.contact is not None and registration.contact.recipient_index == index:
            return registration
        if not request.verification_id:
            raise invalid("verification_id", message="请先获取验证码")
        if not request.code:
            raise invalid("code", Reason.CODE_INVALID, "请输入验证码")
        verified = self._sms.verify(request.verification_id, request.code, Purpose.REGISTRATION)
        if verified.channel != channel or verified.recipient != recipient:
            field = "email" if channel == Channel.EMAIL else "phone"
            raise invalid(field, Reason.CODE_INVALID, "验证码不是发送到该号码的，请重新获取")
        contact = ProvenContact(
            channel=channel,
            recipient_index=index,
            verified_at=verified.verified_at or self._clock.now(),
        )
        return self._update(registration.registration_id, lambda r: replace(r, contact=contact))

    def _prove_face(self, registration: Registration, proof: str) -> Registration:
        if not registration.needs_face():
            return registration
        if not proof:
            raise invalid("face_proof", message="请先完成人脸识别")
        result = self._face.redeem(proof, Purpose.REGISTRATION, registration.registration_id)
        verified_at = result.verified_at or self._clock.now()
        return self._update(
            registration.registration_id, lambda r: replace(r, face_verified_at=verified_at)
        )

    # --- the record in the store ---------------------------------------------------------

    @property
    def _store_ttl(self) -> timedelta:
        return self._ttl + timedelta(minutes=1)  # garbage collection only

    def _identity(self, registration: Registration) -> tuple[Document, str]:
        document = Document(
            registration.document_type, self._pd.decrypt(registration.document_sealed, _DOCUMENT)
        )
        return document, self._pd.decrypt(registration.name_sealed, _NAME)

    def _load(self, registration_id: str) -> Registration:
        require_id(registration_id, "registration_id")
        found = self._kv.get(_key(registration_id))
        if found is None:
            raise _unknown()
        registration = Registration.from_bytes(found.value)
        if not registration.is_live(self._clock.now()):
            raise _unknown()
        return registration

    def _update(self, registration_id: str, apply: _Change) -> Registration:
        now = self._clock.now()

        def change(raw: bytes | None) -> tuple[bytes | None, Registration | None]:
            if raw is None:
                return None, None
            current = Registration.from_bytes(raw)
            if not current.is_live(now):
                return raw, None
            updated = apply(current)
            return updated.to_bytes(), updated

        updated = self._kv.update(_key(registration_id), change, self._store_ttl)
        if updated is None:
            raise _unknown()
        return updated

    def _forget(self, registration_id: str) -> None:
        self._kv.delete(_key(registration_id))


def _key(registration_id: str) -> str:
    return f"auth:registration:{registration_id}"


def _unknown() -> DomainError:
    return DomainError(
        Reason.TICKET_INVALID, "注册信息已失效，请重新注册", {"field": "registration_id"}
    )
