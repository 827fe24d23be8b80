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
    r"\$argon2id\$v=19\$m=(?P<m>\d{1,9}),t=(?P<t>\d{1,9}),p=(?P<p>\d{1,9})"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<hash>[A-Za-z0-9+/]+)"
)
_PBKDF2_PASSLIB = re.compile(
    r"\$pbkdf2-sha256\$(?P<rounds>\d{1,9})\$(?P<salt>[A-Za-z0-9./]*)\$(?P<checksum>[A-Za-z0-9./]+)"
)


# An imported hash is verified at every login, so one that is malformed or asks for
# unbounded work (a billion PBKDF2 rounds, gigabytes of Argon2 memory) is refused when it is
# imported. passlib's pbkdf2-sha256 default is 29,000 rounds, OWASP's 600,000.
_MAX_PBKDF2_ROUNDS = 2_000_000
_MAX_ARGON2_MEMORY_KIB = 256 * 1024
_MAX_ARGON2_ITERATIONS = 16
_MAX_ARGON2_LANES = 16
# What `cryptography` accepts: salts of at least 8 bytes, outputs of at least 4.
_MIN_ARGON2_SALT = 8
_MIN_DIGEST, _MAX_DIGEST = 4, 64


def _b64_decode(text: str, alphabet: bytes = b"+/") -> bytes | None:
    """Unpadded base64 (passlib's adapted alphabet: b"./"), None if it does not decode."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=alphabet, validate=True)
    except ValueError:  # binascii.Error: a length no base64 text has
        return None


def _ab64_decode(text: str) -> bytes:
    """passlib's adapted base64: '.' for '+', no padding (checked by is_supported_hash)."""
    return _b64_decode(text, b"./") or b""


def _argon2_is_verifiable(match: re.Match[str]) -> bool:
    memory, iterations, lanes = int(match["m"]), int(match["t"]), int(match["p"])
    salt, digest = _b64_decode(match["salt"]), _b64_decode(match["hash"])
    return (
        1 <= lanes <= _MAX_ARGON2_LANES
        and 1 <= iterations <= _MAX_ARGON2_ITERATIONS
        and 8 * lanes <= memory <= _MAX_ARGON2_MEMORY_KIB
        and salt is not None
        and len(salt) >= _MIN_ARGON2_SALT
        and digest is not None
        and _MIN_DIGEST <= len(digest) <= _MAX_DIGEST
    )


def _pbkdf2_is_verifiable(match: re.Match[str]) -> bool:
    salt, digest = _b64_decode(match["salt"], b"./"), _b64_decode(match["checksum"], b"./")
    return (
        1 <= int(match["rounds"]) <= _MAX_PBKDF2_ROUNDS
        and salt is not None
        and digest is not None
        and _MIN_DIGEST <= len(digest) <= _MAX_DIGEST
    )


def is_supported_hash(encoded: str) -> bool:
    """True for the hashes `verify` can check in bounded time (checked when a hash is
    imported): the two formats, with parameters `cryptography` accepts and within limits."""
    argon2 = _ARGON2_PHC.fullmatch(encoded)
    if argon2 is not None:
        return _argon2_is_verifiable(argon2)
    pbkdf2 = _PBKDF2_PASSLIB.fullmatch(encoded)
    return pbkdf2 is not None and _pbkdf2_is_verifiable(pbkdf2)


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
        # A stored hash imported before its limits were checked: it matches nothing.
        if not is_supported_hash(encoded):
            return Verification(matches=False)
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
