"""The personal password: policy C1 and Argon2id hashing off the request path.

Stored format: the PHC string of the Argon2 reference implementation, as written and read
by `cryptography`'s `Argon2id.derive_phc_encoded` / `verify_phc_encoded`:

    $argon2id$v=19$m=19456,t=2,p=1$<salt, base64 without padding>$<hash, base64 without padding>

The parameters travel with each hash, so raising them later only needs `needs_rehash`
(checked after a successful login, next auth issue) to return True for older hashes.

Hashes imported from the old system (ImportLegacyPerson) may also be passlib's
`$pbkdf2-sha256$<rounds>$<salt>$<checksum>` (adapted base64); they verify, and always need
a rehash.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from etax_platform.errors import DomainError, Reason

MIN_LENGTH = 8
MAX_LENGTH = 16
# C1 / Q13: the only special characters a password may contain.
SPECIALS = frozenset(".@$%*#_+-'&^")
_DIGITS = frozenset("0123456789")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Longest password we ever hash when checking one (refused before hashing otherwise).
MAX_CHECKED_LENGTH = 128


def check_policy(password: str, field: str = "password") -> None:
    """C1: 8-16 characters, at least two of digits, letters and the specials; nothing else."""

    def refuse(problem: str) -> DomainError:
        return DomainError(Reason.PASSWORD_POLICY, metadata={"field": field, "problem": problem})

    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise refuse("length")
    characters = set(password)
    if not characters <= _DIGITS | _LETTERS | SPECIALS:
        raise refuse("character")
    kinds = sum(bool(characters & kind) for kind in (_DIGITS, _LETTERS, SPECIALS))
    if kinds < 2:
        raise refuse("variety")


@dataclass(frozen=True)
class Argon2Parameters:
    """OWASP (2024): 19 MiB, 2 iterations, 1 lane."""

    memory_kib: int = 19 * 1024
    iterations: int = 2
    lanes: int = 1
    salt_bytes: int = 16
    hash_bytes: int = 32


OWASP = Argon2Parameters()

_ARGON2_PHC = re.compile(
    r"\$argon2id\$v=19\$m=(?P<m>\d+),t=(?P<t>\d+),p=(?P<p>\d+)\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
)
_PBKDF2_PASSLIB = re.compile(
    r"\$pbkdf2-sha256\$(?P<rounds>\d{1,9})\$(?P<salt>[A-Za-z0-9./]*)\$(?P<checksum>[A-Za-z0-9./]+)"
)


def _ab64_decode(text: str) -> bytes:
    """passlib's adapted base64: '.' for '+', no padding."""
    text = text.replace(".", "+")
    return base64.b64decode(text + "=" * (-len(text) % 4))


def is_supported_hash(encoded: str) -> bool:
    """True for the formats `verify` understands (checked when a hash is imported)."""
    return bool(_ARGON2_PHC.fullmatch(encoded) or _PBKDF2_PASSLIB.fullmatch(encoded))


@dataclass(frozen=True)
class Verification:
    matches: bool
    # The hash should be replaced by one with the current parameters (after a success).
    needs_rehash: bool = False


class PasswordHasher:
    """Argon2id in a bounded pool of its own.

    Argon2id releases the GIL, so one worker per core uses every core; the pool keeps the
    memory and CPU spent on hashing bounded while the RPC threads keep serving other calls.
    """

    def __init__(self, workers: int, parameters: Argon2Parameters = OWASP) -> None:
        self.parameters = parameters
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="argon2")

    def hash(self, password: str) -> str:
        return self._pool.submit(self._hash, password).result()

    def verify(self, password: str, encoded: str) -> Verification:
        """Compares in constant time (inside `cryptography`, or `hmac.compare_digest`)."""
        if len(password) > MAX_CHECKED_LENGTH:
            return Verification(matches=False)
        return self._pool.submit(self._verify, password, encoded).result()

    def needs_rehash(self, encoded: str) -> bool:
        match = _ARGON2_PHC.fullmatch(encoded)
        if match is None:
            return True
        current = (self.parameters.memory_kib, self.parameters.iterations, self.parameters.lanes)
        return (int(match["m"]), int(match["t"]), int(match["p"])) != current

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _hash(self, password: str) -> str:
        kdf = Argon2id(
            salt=os.urandom(self.parameters.salt_bytes),
            length=self.parameters.hash_bytes,
            iterations=self.parameters.iterations,
            lanes=self.parameters.lanes,
            memory_cost=self.parameters.memory_kib,
        )
        return kdf.derive_phc_encoded(password.encode())

    def _verify(self, password: str, encoded: str) -> Verification:
        if _ARGON2_PHC.fullmatch(encoded):
            try:
                Argon2id.verify_phc_encoded(password.encode(), encoded)
            except InvalidKey:
                return Verification(matches=False)
            return Verification(matches=True, needs_rehash=self.needs_rehash(encoded))
        legacy = _PBKDF2_PASSLIB.fullmatch(encoded)
        if legacy is not None:
            expected = _ab64_decode(legacy["checksum"])
            derived = PBKDF2HMAC(
                hashes.SHA256(), len(expected), _ab64_decode(legacy["salt"]), int(legacy["rounds"])
            ).derive(password.encode())
            return Verification(hmac.compare_digest(derived, expected), needs_rehash=True)
        return Verification(matches=False)
