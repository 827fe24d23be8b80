"""The account center (C1-C4, B3): what a logged-in person does to their own account.

Every method takes the person id from a verified access token.
"""

from __future__ import annotations

from dataclasses import dataclass

from etax_platform.clock import Clock
from etax_platform.documents import OVERSEAS_TYPES, readings
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.identifiers import normalize_phone
from services.auth.audit import AuditEvent, AuditLog
from services.auth.credentials import PasswordCheck
from services.auth.dependencies import FaceChallenge, FaceChecks, SmsCodes
from services.auth.domain import (
    LEVEL_FACE_VERIFIED,
    Channel,
    PhoneRecord,
    Purpose,
    parse_username,
    require_id,
    start_of_cst_year,
)
from services.auth.passwords import MAX_CHECKED_LENGTH, PasswordHasher, check_policy
from services.auth.storage import AccountStore, PersonRecord, PhoneClaim


@dataclass(frozen=True)
class Profile:
    person: PersonRecord
    phones: list[PhoneRecord]


class AccountCenter:
    def __init__(
        self,
        *,
        accounts: AccountStore,
        sms: SmsCodes,
        face: FaceChecks,
        hasher: PasswordHasher,
        clock: Clock,
        audit: AuditLog | None = None,
    ) -> None:
        self._accounts = accounts
        self._audit = audit
        self._sms = sms
        self._face = face
        self._hasher = hasher
        self._clock = clock
        self._passwords = PasswordCheck(accounts, hasher, clock)

    def _record(self, action: str, person_id: str, **detail: object) -> None:
        if self._audit is not None:
            self._audit.record(AuditEvent(action, person_id=person_id, detail=dict(detail)))

    def _person(self, person_id: str) -> PersonRecord:
        person = self._accounts.person(person_id)
        if person is None:
            # A token for a person that does not exist (any more) is no session.
            raise DomainError(Reason.UNAUTHENTICATED)
        return person

    def profile(self, person_id: str) -> Profile:
        return Profile(self._person(person_id), self._accounts.phones(person_id))

    # --- C1 --------------------------------------------------------------------------------

    def change_password(self, person_id: str, old_password: str, new_password: str) -> None:
        if not old_password or len(old_password) > MAX_CHECKED_LENGTH:
            raise invalid("old_password", message="请输入原密码")
        check_policy(new_password, "new_password")
        person = self._person(person_id)
        if person.password_hash is None:
            raise DomainError(
                Reason.STATE_CONFLICT,
                "您尚未设置个人用户密码，请通过忘记密码设置",
                {"field": "old_password"},
            )
        if not self._passwords.matches(person, old_password, rehash=False):
            raise DomainError(Reason.CREDENTIALS_INVALID, "原密码错误", {"field": "old_password"})
        new_hash = self._hasher.hash(new_password)
        if not self._accounts.set_password(
            person_id, person.password_hash, new_hash, self._clock.now()
        ):
            # Someone changed it between our check and our write: check again.
            raise DomainError(Reason.STATE_CONFLICT, "密码已被修改，请重新操作")
        self._record("password.change", person_id)

    # --- C2 --------------------------------------------------------------------------------

    def set_username(self, person_id: str, raw: str) -> str:
        username = parse_username(raw)
        # A username must never read as another person's free-form document number (the
        # fixed formats are refused by parse_username), so a login account stays unique.
        free_form = [d for d in readings(username.display) if d.type in OVERSEAS_TYPES]
        if free_form and self._accounts.any_person_with_document_index(
            [self._accounts.document_index(d) for d in free_form]
        ):
            raise DomainError(Reason.USERNAME_TAKEN, metadata={"field": "username"})
        now = self._clock.now()
        outcome = self._accounts.set_username(
            person_id, username.display, username.key, now, start_of_cst_year(now)
        )
        if outcome == "unknown":
            raise DomainError(Reason.UNAUTHENTICATED)
        if outcome == "too_soon":
            raise DomainError(Reason.USERNAME_CHANGE_TOO_SOON, metadata={"field": "username"})
        return username.display

    # --- C3, C4 ----------------------------------------------------------------------------

    def add_phone(
        self, person_id: str, raw_phone: str, verification_id: str, code: str
    ) -> PhoneRecord:
        """C3, C4: the phone is verified by SMS, so it becomes the default and is taken from
        whoever held it."""
        phone = normalize_phone(raw_phone)
        if not verification_id:
            raise invalid("verification_id", message="请先获取验证码")
        if not code:
            raise invalid("code", Reason.CODE_INVALID, "请输入验证码")
        self._person(person_id)
        verified = self._sms.verify(verification_id, code, Purpose.PHONE_ADD)
        if verified.channel != Channel.SMS or verified.recipient != phone:
            raise invalid("phone", Reason.CODE_INVALID, "验证码不是发送到该号码的，请重新获取")
        previous = self._accounts.holder_of_phone(phone) if self._audit is not None else None
        held = self._accounts.claim_phone(
            person_id,
            PhoneClaim(phone, verified.verified_at or self._clock.now(), make_default=True),
            self._clock.now(),
        )
        if held is None:
            # C4: someone passed a newer SMS check on this number in the meantime.
            raise DomainError(
                Reason.STATE_CONFLICT, "该手机号码刚被他人验证绑定，请重新获取验证码后再试"
            )
        taken = previous is not None and previous != person_id
        self._record("phone.add", person_id, phone_id=held.phone_id, takeover=taken)
        if previous is not None and taken:
            # C4: the previous holder lost the number.
            self._record("phone.taken_over", previous)
        # As the profile shows it (the first phone is the default even when not asked for).
        shown = (p for p in self._accounts.phones(person_id) if p.phone_id == held.phone_id)
        return next(shown, held)

    def remove_phone(self, person_id: str, phone_id: str) -> None:
        require_id(phone_id, "phone_id")
        if not self._accounts.remove_phone(person_id, phone_id):
            raise DomainError(Reason.NOT_FOUND, metadata={"field": "phone_id"})
        self._record("phone.remove", person_id, phone_id=phone_id)

    def set_default_phone(self, person_id: str, phone_id: str) -> None:
        require_id(phone_id, "phone_id")
        if not self._accounts.set_default_phone(person_id, phone_id):
            raise DomainError(Reason.NOT_FOUND, metadata={"field": "phone_id"})

    # --- B3 --------------------------------------------------------------------------------

    def start_real_name_upgrade(self, person_id: str) -> FaceChallenge:
        person = self._person(person_id)
        if person.real_name_level >= LEVEL_FACE_VERIFIED:
            raise DomainError(Reason.STATE_CONFLICT, "您的实名等级已是四级")
        return self._face.create_ticket(
            Purpose.REAL_NAME_UPGRADE, person_id, person.document, person.name
        )

    def complete_real_name_upgrade(self, person_id: str, proof: str) -> int:
        if not proof:
            raise invalid("proof", message="请先完成人脸识别")
        self._person(person_id)
        result = self._face.redeem(proof, Purpose.REAL_NAME_UPGRADE, person_id)
        return self._accounts.raise_level(
            person_id, LEVEL_FACE_VERIFIED, result.verified_at or self._clock.now()
        )
