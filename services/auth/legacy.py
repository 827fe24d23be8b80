"""The old enterprise login (D7, Q10), for a transition period.

The old system had an enterprise account with an enterprise password. Its credentials are
imported through InternalAuthService.ImportLegacyCredential: enterprise code, the old
password's hash (the formats the accounts side accepts: Argon2id PHC or passlib
pbkdf2-sha256) and the registered person the old login logs in as (usually the legal
representative). A1 holds: the session is that person's.

LegacyLogin(enterprise code, password) works until ETAX_AUTH_LEGACY_LOGIN_CLOSES_AT
(empty: open), then LEGACY_LOGIN_CLOSED. The password attempt counts for the person's
password lockout (E1); a legacy hash is replaced by a current Argon2id hash at the first
success. The session is enterprise business for that enterprise, and binding decides the
role as for the new login: a person without an active relation gets RELATION_NOT_FOUND.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite

from etax_platform.clock import Clock
from etax_platform.db import Database
from etax_platform.documents import Document
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.pii import mask_name
from services.auth.audit import AuditEvent, AuditLog, detail_of, loggable_code
from services.auth.checks import Checks
from services.auth.dependencies import Bindings
from services.auth.login import ENTERPRISE, PASSWORD_METHOD, LoginTarget, identity_for
from services.auth.models import legacy_credentials
from services.auth.passwords import PasswordHasher, is_supported_hash
from services.auth.sessions import IssuedSession, Principal, Sessions
from services.auth.storage import AccountStore


class LegacyLogins:
    def __init__(
        self,
        *,
        database: Database,
        accounts: AccountStore,
        hasher: PasswordHasher,
        checks: Checks,
        bindings: Bindings,
        sessions: Sessions,
        audit: AuditLog,
        clock: Clock,
        closes_at: datetime | None,
    ) -> None:
        self._db = database
        self._accounts = accounts
        self._hasher = hasher
        self._checks = checks
        self._bindings = bindings
        self._sessions = sessions
        self._audit = audit
        self._clock = clock
        self._closes_at = closes_at

    def import_credential(self, enterprise_code: str, password_hash: str, person: Document) -> str:
        """Stores (or replaces) the enterprise's old credential; returns the person id."""
        if not password_hash or not is_supported_hash(password_hash):
            raise invalid("legacy_password_hash", message="不支持的密码摘要格式")
        person_id = self._accounts.person_id_for_document(person)
        if person_id is None:
            raise DomainError(Reason.USER_NOT_REGISTERED, metadata={"field": "person"})
        now = self._clock.now()
        values = {
            "enterprise_code": enterprise_code,
            "person_id": person_id,
            "password_hash": password_hash,
            "imported_at": now,
        }
        with self._db.transaction() as session:
            dialect = postgresql if self._db.engine.dialect.name == "postgresql" else sqlite
            insert = dialect.insert(legacy_credentials).values(**values)
            session.execute(
                insert.on_conflict_do_update(
                    index_elements=[legacy_credentials.c.enterprise_code],
                    set_={k: v for k, v in values.items() if k != "enterprise_code"},
                )
            )
            self._audit.insert(
                session,
                AuditEvent(
                    "legacy.import",
                    person_id=person_id,
                    entry=ENTERPRISE,
                    detail={"enterprise_code": loggable_code(enterprise_code)},
                ),
            )
        return person_id

    def is_closed(self) -> bool:
        return self._closes_at is not None and self._clock.now() >= self._closes_at

    def login(self, enterprise_code: str, password: str, province: str) -> IssuedSession:
        with self._audit.attempt(
            "legacy.login",
            entry=ENTERPRISE,
            province=province,
            method="password",
            detail={"enterprise_code": loggable_code(enterprise_code)},
        ) as event:
            if self.is_closed():
                raise DomainError(
                    Reason.LEGACY_LOGIN_CLOSED,
                    metadata={"closed_at": self._closes_at.isoformat() if self._closes_at else ""},
                )
            if not password:
                raise invalid("password", message="请输入密码")
            with self._db.reading() as session:
                row = session.execute(
                    select(
                        legacy_credentials.c.person_id, legacy_credentials.c.password_hash
                    ).where(legacy_credentials.c.enterprise_code == enterprise_code)
                ).first()
            person = None if row is None else self._accounts.person(row.person_id)
            if row is None or person is None:
                raise DomainError(Reason.USER_NOT_REGISTERED, metadata={"field": "enterprise_code"})
            event.person_id = person.person_id
            stored_hash: str = row.password_hash
            needs_rehash: list[bool] = []

            def check() -> bool:
                verification = self._hasher.verify(password, stored_hash)
                needs_rehash.append(verification.needs_rehash)
                return verification.matches

            self._checks.password(person.person_id, check, event)
            if needs_rehash and needs_rehash[0]:
                self._rehash(enterprise_code, stored_hash, password)
            identity = identity_for(
                self._bindings,
                person,
                LoginTarget(ENTERPRISE, enterprise_code=enterprise_code),
                province,
            )
            event.detail.update(detail_of(identity))
            return self._sessions.open(
                Principal(person.person_id, mask_name(person.name), person.real_name_level),
                identity,
                province,
                (PASSWORD_METHOD,),
                event,
                extra_claims={"legacy": True},
            )

    def _rehash(self, enterprise_code: str, old_hash: str, password: str) -> None:
        new_hash = self._hasher.hash(password)
        with self._db.transaction() as session:
            session.execute(
                update(legacy_credentials)
                .where(
                    legacy_credentials.c.enterprise_code == enterprise_code,
                    legacy_credentials.c.password_hash == old_hash,
                )
                .values(password_hash=new_hash)
            )
