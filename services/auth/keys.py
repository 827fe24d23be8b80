"""The Ed25519 keys that sign access tokens, kept in auth's database.

Minimal on purpose: the first start creates one key; every key in the table is published
to the verifier; the newest signs. The next issue adds rotation (a new row, retirement of
old ones) and serves the public keys through AuthService.GetPublicKeys. Private keys are
sealed at rest like personal numbers (AES-256-GCM under the platform keyring).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import select

from etax_platform.clock import Clock
from etax_platform.db import Database
from etax_platform.pii import PersonalData
from etax_platform.tokens import SigningKey
from services.auth.models import signing_keys

_CONTEXT = "signing_keys.private_key"


class SigningKeys:
    def __init__(self, database: Database, personal_data: PersonalData, clock: Clock) -> None:
        self._db = database
        self._pd = personal_data
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[tuple[datetime, SigningKey]] | None = None

    def ensure(self) -> None:
        """Creates the first key if there is none. Two replicas starting together may both
        create one; both are published, and the newest signs everywhere."""
        with self._db.reading() as session:
            present = session.scalar(select(signing_keys.c.kid).limit(1))
        if present is None:
            key = SigningKey.generate()
            with self._db.transaction() as session:
                session.execute(
                    signing_keys.insert().values(
                        kid=key.kid,
                        private_key=self._pd.encrypt(key.private_pem().decode(), _CONTEXT),
                        created_at=self._clock.now(),
                    )
                )
        self.reload()

    def reload(self) -> None:
        with self._db.reading() as session:
            rows = session.execute(
                select(signing_keys.c.kid, signing_keys.c.private_key, signing_keys.c.created_at)
            ).all()
        keys = [
            (
                row.created_at,
                SigningKey.from_pem(row.kid, self._pd.decrypt(row.private_key, _CONTEXT).encode()),
            )
            for row in rows
        ]
        keys.sort(key=lambda item: (item[0], item[1].kid))
        with self._lock:
            self._keys = keys

    def _loaded(self) -> list[tuple[datetime, SigningKey]]:
        with self._lock:
            keys = self._keys
        if keys is None:
            self.reload()
            return self._loaded()
        return keys

    def current(self) -> SigningKey:
        """The key that signs new tokens: the newest."""
        return self._loaded()[-1][1]

    def public_jwks(self) -> Sequence[Mapping[str, str]]:
        """Fetches again on each call (the verifier calls it on an unknown key id)."""
        self.reload()
        return [key.public_jwk() for _, key in self._loaded()]
