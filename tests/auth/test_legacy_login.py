"""D7: the old enterprise login works until its configured closing date; its credentials
are imported through InternalAuthService.ImportLegacyCredential; A1 holds (the session is
the bound person's); the person's password lockout applies."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from etax.auth.v1 import auth_pb2
from etax.common.v1 import types_pb2
from sqlalchemy import select

from etax_platform.clock import ManualClock
from etax_platform.db import Database
from services.auth.models import legacy_credentials
from tests.auth.conftest import Backend, failure_of, new_resident_id
from tests.auth.platform import ENTERPRISE, Person, Platform, start_platform

OLD_PASSWORD = "Old-enterprise1"
CLOSES_AT = ManualClock().now() + timedelta(days=30)


def pbkdf2(password: str) -> str:
    """A passlib pbkdf2-sha256 hash, as the old system exports them."""
    salt = os.urandom(16)
    digest = PBKDF2HMAC(hashes.SHA256(), 32, salt, 1000).derive(password.encode())

    def ab64(raw: bytes) -> str:
        return base64.b64encode(raw).decode().rstrip("=").replace("+", ".")

    return f"$pbkdf2-sha256$1000${ab64(salt)}${ab64(digest)}"


@pytest.fixture
def legacy(backend: Backend, tmp_path: Path) -> Iterator[Platform]:
    with start_platform(backend, tmp_path, legacy_login_closes_at=CLOSES_AT.isoformat()) as running:
        yield running


def _import(platform: Platform, code: str, person: Person, hashed: str) -> None:
    platform.internal.ImportLegacyCredential(
        auth_pb2.ImportLegacyCredentialRequest(
            enterprise_code=code,
            legacy_password_hash=hashed,
            person=types_pb2.Document(type=201, number=person.document),
        ),
        timeout=10,
    )


def _login(platform: Platform, code: str, password: str = OLD_PASSWORD) -> auth_pb2.Session:
    return platform.auth.LegacyLogin(
        auth_pb2.LegacyLoginRequest(enterprise_code=code, password=password, province="37"),
        timeout=20,
    ).session


def _stored_hash(platform: Platform, code: str) -> str:
    database = Database(platform.settings.database_url_for("auth"))
    try:
        with database.reading() as session:
            return str(
                session.scalar(
                    select(legacy_credentials.c.password_hash).where(
                        legacy_credentials.c.enterprise_code == code
                    )
                )
            )
    finally:
        database.dispose()


def test_d7_a1_the_old_login_works_until_the_closing_date(legacy: Platform) -> None:
    boss = legacy.person()
    code = legacy.enterprise(boss)
    _import(legacy, code, boss, pbkdf2(OLD_PASSWORD))
    session = _login(legacy, code)
    assert session.person_id == boss.person_id  # A1: a person, not an enterprise account
    assert (session.identity.entry, session.identity.enterprise_code) == (ENTERPRISE, code)
    assert session.identity.role == types_pb2.ROLE_LEGAL_REPRESENTATIVE
    # The old hash is replaced by Argon2id at the first success.
    assert _stored_hash(legacy, code).startswith("$argon2id$")
    assert _login(legacy, code).person_id == boss.person_id
    legacy.clock.set(CLOSES_AT - timedelta(seconds=1))
    assert _login(legacy, code).person_id == boss.person_id
    legacy.clock.set(CLOSES_AT)
    closed = failure_of(_login, legacy, code)
    assert (closed.reason, closed.text) == (
        "LEGACY_LOGIN_CLOSED",
        "旧版登录方式已关闭，请使用新版登录",
    )
    # The new login is unaffected.
    assert legacy.login(boss, entry=ENTERPRISE, enterprise_code=code).person_id == boss.person_id


def test_d7_e1_wrong_old_passwords_count_for_the_persons_lockout(legacy: Platform) -> None:
    boss = legacy.person()
    code = legacy.enterprise(boss)
    _import(legacy, code, boss, pbkdf2(OLD_PASSWORD))
    wrong = failure_of(_login, legacy, code, "Wrong.pass1")
    assert (wrong.reason, wrong.metadata["remaining_attempts"]) == ("CREDENTIALS_INVALID", "4")
    for _ in range(3):
        failure_of(legacy.start, boss.document, "Wrong.pass1")
    assert failure_of(_login, legacy, code, "Wrong.pass1").reason == "AUTH_METHOD_LOCKED"
    assert failure_of(_login, legacy, code).reason == "AUTH_METHOD_LOCKED"


def test_d7_import_refuses_unknown_persons_and_unsupported_hashes(legacy: Platform) -> None:
    boss = legacy.person()
    code = legacy.enterprise(boss)
    stranger = Person("", new_resident_id(), "")
    unknown = failure_of(_import, legacy, code, stranger, pbkdf2(OLD_PASSWORD))
    assert (unknown.reason, unknown.metadata["field"]) == ("USER_NOT_REGISTERED", "person")
    for hashed in ("", "5f4dcc3b5aa765d61d8327deb882cf99", *UNVERIFIABLE_HASHES):
        bad = failure_of(_import, legacy, code, boss, hashed)
        assert (bad.reason, bad.metadata["field"]) == ("INVALID_ARGUMENT", "legacy_password_hash")
    assert failure_of(_login, legacy, code).reason == "USER_NOT_REGISTERED"


# Found by the fuzzer: ImportLegacyCredential took these, and every LegacyLogin of the
# enterprise then answered INTERNAL (cryptography refuses a 4-byte salt) or would hash for
# minutes (a billion rounds).
UNVERIFIABLE_HASHES = (
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",  # 4-byte salt
    "$argon2id$v=19$m=19456,t=2,p=0$c2FsdHNhbHQ$aGFzaGhhc2g",  # no lanes
    "$argon2id$v=19$m=999999999,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",  # ~1 TB of memory
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$a",  # not base64
    "$pbkdf2-sha256$999999999$c2FsdA$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo",
    "$pbkdf2-sha256$0$c2FsdA$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo",
    "$pbkdf2-sha256$1000$c2FsdA$Y",  # not base64
)


def test_d7_without_a_relation_binding_refuses_as_for_the_new_login(legacy: Platform) -> None:
    boss, former = legacy.person(), legacy.person()
    code = legacy.enterprise(boss)
    _import(legacy, code, former, pbkdf2(OLD_PASSWORD))
    assert failure_of(_login, legacy, code).reason == "RELATION_NOT_FOUND"


def test_d7_an_open_ended_transition_has_no_closing_date(platform: Platform) -> None:
    boss = platform.person()
    code = platform.enterprise(boss)
    _import(platform, code, boss, pbkdf2(OLD_PASSWORD))
    platform.clock.advance(timedelta(days=3650))
    assert _login(platform, code).person_id == boss.person_id
