"""C1 password policy and Argon2id hashing."""

from __future__ import annotations

import base64
import os
import threading
from datetime import datetime

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from etax_platform.clock import CST, ManualClock
from etax_platform.db import Database
from etax_platform.documents import Document, DocumentType
from etax_platform.errors import DomainError, Reason
from etax_platform.pii import PersonalData
from services.auth.app import MIGRATIONS
from services.auth.credentials import PasswordCheck
from services.auth.passwords import (
    Argon2Parameters,
    PasswordHasher,
    Verification,
    check_policy,
    is_supported_hash,
)
from services.auth.storage import AccountStore, NewPerson

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=CST)

POLICY_TEXT = "密码长度为8-16个字符，必须包含数字、字母（区分大小写）、特殊字符三者中至少两种"


def _refused(password: str) -> str:
    with pytest.raises(DomainError) as caught:
        check_policy(password)
    assert caught.value.reason is Reason.PASSWORD_POLICY
    assert caught.value.user_text == POLICY_TEXT
    assert caught.value.metadata["field"] == "password"
    return caught.value.metadata["problem"]


@pytest.mark.parametrize(
    "password",
    [
        "abcd1234",  # letters + digits
        "abcdefg.",  # letters + special
        "1234567#",  # digits + special
        "Aa1.@$%*#_+-'&^",  # all three, every special
        "ABCDEFG1",
        "a1a1a1a1a1a1a1a1",  # 16
    ],
)
def test_c1_accepted(password: str) -> None:
    check_policy(password)


@pytest.mark.parametrize("special", list(".@$%*#_+-'&^"))
def test_c1_each_listed_special_counts(special: str) -> None:
    check_policy("abcdefg" + special)
    check_policy("1234567" + special)


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("abc1234", "length"),  # 7
        ("a1a1a1a1a1a1a1a1a", "length"),  # 17
        ("", "length"),
        ("abcdefgh", "variety"),
        ("ABCDefgh", "variety"),  # case does not make a second kind
        ("12345678", "variety"),
        (".@$%*#_+", "variety"),
        ("abcd 1234", "character"),
        ("abcd!1234", "character"),
        ("abcd(1234", "character"),
        ("abcd~1234", "character"),
        ("abcd/1234", "character"),
        ("密码abcd1234", "character"),
        ("abcdé1234", "character"),
        ("ａｂｃｄ1234", "character"),  # full-width letters
        ("abcd１２３４", "character"),  # full-width digits
    ],
)
def test_c1_refused(password: str, problem: str) -> None:
    assert _refused(password) == problem


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    return PasswordHasher(2)


def test_argon2id_hash_carries_owasp_parameters(hasher: PasswordHasher) -> None:
    encoded = hasher.hash("Passw0rd.1")
    assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert is_supported_hash(encoded)
    assert hasher.hash("Passw0rd.1") != encoded  # random salt
    assert hasher.verify("Passw0rd.1", encoded).matches
    assert not hasher.verify("Passw0rd.2", encoded).matches
    assert not hasher.verify("Passw0rd.1", encoded).needs_rehash


def test_hashes_with_other_parameters_verify_and_ask_for_a_rehash(hasher: PasswordHasher) -> None:
    weaker = PasswordHasher(1, Argon2Parameters(memory_kib=8 * 1024, iterations=1))
    old = weaker.hash("Passw0rd.1")
    weaker.close()
    assert old.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    verification = hasher.verify("Passw0rd.1", old)
    assert verification.matches and verification.needs_rehash


def test_legacy_pbkdf2_hashes_verify_and_ask_for_a_rehash(hasher: PasswordHasher) -> None:
    salt = os.urandom(16)
    digest = PBKDF2HMAC(hashes.SHA256(), 32, salt, 1000).derive(b"Old.pass1")

    def ab64(raw: bytes) -> str:
        return base64.b64encode(raw).decode().rstrip("=").replace("+", ".")

    legacy = f"$pbkdf2-sha256$1000${ab64(salt)}${ab64(digest)}"
    assert is_supported_hash(legacy)
    verification = hasher.verify("Old.pass1", legacy)
    assert verification.matches and verification.needs_rehash
    assert not hasher.verify("Old.pass2", legacy).matches
    assert not is_supported_hash("5f4dcc3b5aa765d61d8327deb882cf99")  # bare MD5
    assert not hasher.verify("password", "5f4dcc3b5aa765d61d8327deb882cf99").matches


def test_a_stored_hash_that_cannot_be_verified_matches_nothing(hasher: PasswordHasher) -> None:
    """Imported before the import checked it (found by the fuzzer): no INTERNAL at login."""
    for stored in (
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",  # 4-byte salt: cryptography refuses
        "$pbkdf2-sha256$999999999$c2FsdA$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo",
    ):
        assert not is_supported_hash(stored)
        assert hasher.verify("Passw0rd.1", stored) == Verification(matches=False)


def test_hashing_runs_in_its_own_bounded_pool(hasher: PasswordHasher) -> None:
    seen: set[str] = set()
    original = hasher._hash

    def spy(password: str) -> str:
        seen.add(threading.current_thread().name)
        return original(password)

    hasher._hash = spy  # type: ignore[method-assign]
    try:
        threads = [threading.Thread(target=hasher.hash, args=("Passw0rd.1",)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        del hasher._hash
    assert seen and all(name.startswith("argon2") for name in seen)
    assert len(seen) <= 2


def test_a_match_on_an_old_hash_stores_a_current_one(
    database_url: str, personal_data: PersonalData, hasher: PasswordHasher
) -> None:
    """The rehash-on-login hook: same password, current parameters, no "password change"."""
    database = Database(database_url)
    database.migrate(MIGRATIONS)
    try:
        accounts = AccountStore(database, personal_data)
        weaker = PasswordHasher(1, Argon2Parameters(memory_kib=8 * 1024, iterations=1))
        old_hash = weaker.hash("Passw0rd.1")
        weaker.close()
        person_id, _ = accounts.create_person(
            NewPerson(
                document=Document(DocumentType.RESIDENT_IDENTITY_CARD, "11010519491231002X"),
                name="张三",
                overseas=False,
                real_name_level=3,
                registered_province="37",
                origin="legacy_import",
                password_hash=old_hash,
            ),
            None,
            T0,
        )
        check = PasswordCheck(accounts, hasher, ManualClock(T0))
        person = accounts.person(person_id)
        assert person is not None
        assert not check.matches(person, "Passw0rd.2")
        assert accounts.person(person_id).password_hash == old_hash  # type: ignore[union-attr]
        assert check.matches(person, "Passw0rd.1")
        rehashed = accounts.person(person_id)
        assert rehashed is not None and rehashed.password_hash is not None
        assert rehashed.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert check.matches(rehashed, "Passw0rd.1")
        # A stale read loses against the newer hash (compare-and-set), and still matches.
        assert check.matches(person, "Passw0rd.1")
        assert accounts.person(person_id).password_hash == rehashed.password_hash  # type: ignore[union-attr]
    finally:
        database.dispose()
