"""What the hall, the core tax system and the other services ask of auth (internal RPCs)."""

from __future__ import annotations

from etax_platform.clock import Clock
from etax_platform.documents import Document
from etax_platform.errors import DomainError, Reason, invalid
from services.auth import metrics
from services.auth.domain import (
    LEVEL_FACE_VERIFIED,
    LEVEL_MIGRATED,
    LEVELS,
    require_id,
    require_real_name_level,
)
from services.auth.passwords import is_supported_hash
from services.auth.storage import AccountStore, NewPerson, PersonRecord, PhoneClaim


class InternalAccounts:
    def __init__(self, *, accounts: AccountStore, clock: Clock) -> None:
        self._accounts = accounts
        self._clock = clock

    def record_offline_real_name(
        self, document: Document, name: str, tax_authority: tuple[str, str, str]
    ) -> str | None:
        """B2, B5, B6: the hall collected the person. Before registration it lets hall-first
        documents register and skips the face step; after it, it lifts the overseas
        restriction and, as the hall saw the person, makes them level 4."""
        return self._accounts.record_offline_collection(
            document, name, tax_authority, self._clock.now(), LEVEL_FACE_VERIFIED
        )

    def import_legacy_person(
        self,
        document: Document,
        name: str,
        *,
        phone: str | None,
        legacy_password_hash: str,
        face_verified: bool,
        province: str,
    ) -> tuple[str, int]:
        """B3: a person from the old system; level 3 unless the old system holds a face check.

        The imported phone only takes a number nobody holds (it was not checked here); the
        password hash is kept as exported and re-hashed at the first login.
        """
        if legacy_password_hash and not is_supported_hash(legacy_password_hash):
            raise invalid("legacy_password_hash", message="不支持的密码摘要格式")
        now = self._clock.now()
        level = LEVEL_FACE_VERIFIED if face_verified else LEVEL_MIGRATED
        person_id, _held = self._accounts.create_person(
            NewPerson(
                document=document,
                name=name,
                overseas=False,
                real_name_level=level,
                registered_province=province,
                origin="legacy_import",
                password_hash=legacy_password_hash or None,
                face_verified_at=now if face_verified else None,
            ),
            None if phone is None else PhoneClaim(phone, verified_at=None),
            now,
        )
        metrics.REGISTRATIONS.labels(
            "legacy_import", metrics.document_kind(document.type), str(level)
        ).inc()
        return person_id, level

    def get_person(self, person_id: str) -> PersonRecord:
        require_id(person_id, "person_id")
        person = self._accounts.person(person_id)
        if person is None:
            raise DomainError(Reason.NOT_FOUND, metadata={"field": "person_id"})
        return person

    def resolve_person(self, document: Document) -> str | None:
        return self._accounts.person_id_for_document(document)

    def require_real_name_level(self, person_id: str, min_level: int) -> int:
        if min_level not in LEVELS:
            raise invalid("min_level", message="实名等级应为1-4")
        return require_real_name_level(self.get_person(person_id).real_name_level, min_level)
