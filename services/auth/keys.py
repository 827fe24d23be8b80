"""The Ed25519 keys that sign access tokens: several keys with ids, rotation, publication.

A key's life, all of it in auth's database (`signing_keys`, private keys sealed like
personal numbers):

1. made and **published** (GetPublicKeys, the JWKS file) at `created_at`;
2. **signs** from `signs_from`, at least `publish_lead` later, so every gateway's cached
   key set (Envoy refreshes it every 300 s) and every replica's copy (reloaded every
   `reload_interval`) holds it before the first token signed with it arrives;
3. stops signing when the next generation's `signs_from` comes;
4. stays published until the last token it signed has expired (token lifetime + leeway),
   then disappears from the key set.

Rotation is due `rotation_interval` after the newest key began signing (checked lazily by
whichever replica issues a token or serves the keys), or asked for by
InternalAuthService.RotateSigningKey. Replicas rotating at once insert the same next
generation; the unique generation keeps one. The first key signs at once: nothing can
have cached a key set before there was a key.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from etax_platform.clock import Clock
from etax_platform.db import Database
from etax_platform.pii import PersonalData
from etax_platform.tokens import SigningKey
from services.auth.models import signing_keys

log = logging.getLogger("etax.auth.keys")

_CONTEXT = "signing_keys.private_key"
# Verifiers accept a token this long after its exp (etax_platform.tokens._LEEWAY), plus a
# margin for clocks that differ between machines.
_VERIFIER_SLACK = timedelta(seconds=90)
# Keys unpublished this long ago are deleted at the next rotation.
_KEEP_RETIRED = timedelta(days=1)


@dataclass(frozen=True)
class KeyPolicy:
    access_token_ttl: timedelta = timedelta(minutes=15)
    # At least the gateway's JWKS cache time (300 s) plus reload_interval.
    publish_lead: timedelta = timedelta(minutes=10)
    rotation_interval: timedelta = timedelta(days=7)
    reload_interval: timedelta = timedelta(seconds=60)

    @property
    def token_lifetime(self) -> timedelta:
        return self.access_token_ttl + _VERIFIER_SLACK


@dataclass(frozen=True)
class StoredKey:
    key: SigningKey
    generation: int
    created_at: datetime
    signs_from: datetime


@dataclass(frozen=True)
class KeySet:
    """The keys in generation order, and what they are for at a given instant."""

    keys: tuple[StoredKey, ...]

    @property
    def newest(self) -> StoredKey:
        return self.keys[-1]

    def signing(self, now: datetime) -> StoredKey:
        """The newest key whose signing time has come."""
        active = [k for k in self.keys if k.signs_from <= now]
        return active[-1] if active else self.keys[0]

    def _unpublished_since(self, index: int, now: datetime, policy: KeyPolicy) -> datetime | None:
        if index + 1 >= len(self.keys):
            return None
        successor = self.keys[index + 1]
        if successor.signs_from > now:
            return None
        return successor.signs_from + policy.token_lifetime

    def published(self, now: datetime, policy: KeyPolicy) -> list[StoredKey]:
        """Keys that sign, will sign, or signed tokens that may still be valid."""
        published = []
        for index, key in enumerate(self.keys):
            ends = self._unpublished_since(index, now, policy)
            if ends is None or now < ends:
                published.append(key)
        return published

    def prunable(self, now: datetime, policy: KeyPolicy) -> list[str]:
        found = []
        for index, key in enumerate(self.keys):
            ends = self._unpublished_since(index, now, policy)
            if ends is not None and now >= ends + _KEEP_RETIRED:
                found.append(key.key.kid)
        return found

    def rotation_due(self, now: datetime, policy: KeyPolicy) -> bool:
        newest = self.newest
        if newest.signs_from > now:
            return False  # a rotation is already under way
        return now >= newest.signs_from + policy.rotation_interval - policy.publish_lead


class SigningKeys:
    def __init__(
        self,
        database: Database,
        personal_data: PersonalData,
        clock: Clock,
        policy: KeyPolicy | None = None,
        jwks_file: Path | None = None,
    ) -> None:
        self._db = database
        self._pd = personal_data
        self._clock = clock
        self.policy = policy or KeyPolicy()
        self._jwks_file = jwks_file
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._keys: KeySet | None = None
        self._parsed: dict[str, SigningKey] = {}
        self._jwks: dict[str, dict[str, str]] = {}
        self._next_reload: datetime | None = None
        self._written: list[dict[str, str]] | None = None

    # --- storage ---------------------------------------------------------------------------

    def _insert(self, generation: int, now: datetime, signs_from: datetime) -> bool:
        key = SigningKey.generate()
        try:
            with self._db.transaction() as session:
                session.execute(
                    signing_keys.insert().values(
                        kid=key.kid,
                        private_key=self._pd.encrypt(key.private_pem().decode(), _CONTEXT),
                        created_at=now,
                        generation=generation,
                        signs_from=signs_from,
                    )
                )
        except IntegrityError:
            return False  # another replica made this generation
        log.info("signing key %s (generation %d) signs from %s", key.kid, generation, signs_from)
        return True

    def ensure(self) -> None:
        """Creates the first key if there is none (it signs at once)."""
        with self._db.reading() as session:
            present = session.scalar(select(signing_keys.c.kid).limit(1))
        if present is None:
            now = self._clock.now()
            self._insert(1, now, now)
        self.reload()

    def reload(self) -> KeySet:
        with self._db.reading() as session:
            rows = session.execute(
                select(
                    signing_keys.c.kid,
                    signing_keys.c.private_key,
                    signing_keys.c.created_at,
                    signing_keys.c.generation,
                    signing_keys.c.signs_from,
                ).order_by(signing_keys.c.generation)
            ).all()
        if not rows:
            raise RuntimeError("no signing key: call ensure() first")
        keys = []
        for row in rows:
            parsed = self._parsed.get(row.kid)
            if parsed is None:
                pem = self._pd.decrypt(row.private_key, _CONTEXT).encode()
                parsed = self._parsed[row.kid] = SigningKey.from_pem(row.kid, pem)
            keys.append(StoredKey(parsed, row.generation, row.created_at, row.signs_from))
        key_set = KeySet(tuple(keys))
        now = self._clock.now()
        with self._lock:
            self._keys = key_set
            self._next_reload = now + self.policy.reload_interval
        self._write_jwks(key_set, now)
        return key_set

    # --- use -------------------------------------------------------------------------------

    def _fresh(self) -> KeySet:
        """The key set, reloaded when due, rotated when due (any replica may do it)."""
        now = self._clock.now()
        with self._lock:
            key_set, next_reload = self._keys, self._next_reload
        if key_set is None:
            return self.reload()
        if next_reload is not None and now < next_reload:
            return key_set
        # One thread refreshes; the others keep using the set they have meanwhile.
        if not self._refreshing.acquire(blocking=False):
            return key_set
        try:
            key_set = self.reload()
            if key_set.rotation_due(now, self.policy):
                self._rotate(key_set, now)
                key_set = self.reload()
        finally:
            self._refreshing.release()
        return key_set

    def _rotate(self, key_set: KeySet, now: datetime) -> None:
        self._insert(key_set.newest.generation + 1, now, now + self.policy.publish_lead)
        prunable = key_set.prunable(now, self.policy)
        if prunable:
            with self._db.transaction() as session:
                session.execute(delete(signing_keys).where(signing_keys.c.kid.in_(prunable)))

    def rotate(self) -> StoredKey:
        """RotateSigningKey: a new key now, signing after the lead; the pending one if a
        rotation is already under way."""
        key_set = self.reload()
        now = self._clock.now()
        if key_set.newest.signs_from <= now:
            self._rotate(key_set, now)
            key_set = self.reload()
        return key_set.newest

    def current(self) -> SigningKey:
        """The key that signs new tokens now."""
        return self._fresh().signing(self._clock.now()).key

    def _jwk(self, key: SigningKey) -> dict[str, str]:
        jwk = self._jwks.get(key.kid)
        if jwk is None:
            jwk = self._jwks[key.kid] = key.public_jwk()
        return jwk

    def public_jwks(self) -> Sequence[Mapping[str, str]]:
        """The published keys as JWKs (GetPublicKeys, the verifier, the JWKS file)."""
        key_set = self._fresh()
        return [self._jwk(k.key) for k in key_set.published(self._clock.now(), self.policy)]

    def _write_jwks(self, key_set: KeySet, now: datetime) -> None:
        """The gateway's file mode reads {"keys": [...]}: written atomically, when it changes."""
        if self._jwks_file is None:
            return
        jwks = [self._jwk(k.key) for k in key_set.published(now, self.policy)]
        with self._lock:
            if jwks == self._written:
                return
            self._written = jwks
        target = self._jwks_file
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            try:
                with os.fdopen(fd, "w") as handle:
                    json.dump({"keys": jwks}, handle, indent=1)
                Path(temp).chmod(0o644)
                Path(temp).replace(target)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except OSError as error:
            with self._lock:
                self._written = None
            log.warning("could not write the JWKS file %s: %s", target, error)
