"""Checking a person's password, the one place that does it (account center now, login
in the next issue), with the rehash-on-success hook DESIGN.md asks for."""

from __future__ import annotations

from etax_platform.clock import Clock
from services.auth.passwords import PasswordHasher
from services.auth.storage import AccountStore, PersonRecord


class PasswordCheck:
    def __init__(self, accounts: AccountStore, hasher: PasswordHasher, clock: Clock) -> None:
        self._accounts = accounts
        self._hasher = hasher
        self._clock = clock

    def matches(self, person: PersonRecord, password: str, *, rehash: bool = True) -> bool:
        """True when the password is the person's. A match on a hash with old parameters
        (or an imported legacy hash) stores a fresh Argon2id hash of it, unless the hash
        changed meanwhile (compare-and-set: a concurrent password change wins). A caller
        about to replace the password anyway passes rehash=False."""
        if person.password_hash is None:
            return False
        verification = self._hasher.verify(password, person.password_hash)
        if rehash and verification.matches and verification.needs_rehash:
            self._accounts.replace_password_hash(
                person.person_id, person.password_hash, self._hasher.hash(password)
            )
        return verification.matches
