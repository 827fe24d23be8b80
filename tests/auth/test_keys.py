"""Signing keys: what each key is for over time, concurrent rotation by replicas, the JWKS
file for the gateway, the migration of keys made before rotation existed, and a withdrawn
key refused by a verifier outside auth."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config
from etax.auth.v1 import auth_pb2
from etax.binding.v1 import binding_pb2
from etax.common.v1 import types_pb2
from sqlalchemy import select, text

from etax_platform.clock import ManualClock, from_timestamp
from etax_platform.db import Database
from etax_platform.pii import PersonalData
from etax_platform.tokens import AccessClaims, SigningKey, TokenIssuer
from services.auth.app import MIGRATIONS
from services.auth.keys import KeyPolicy, KeySet, SigningKeys, StoredKey
from services.auth.models import signing_keys
from tests.auth.conftest import failure_of
from tests.auth.platform import Platform

POLICY = KeyPolicy()
T0 = ManualClock().now()


def _key(generation: int, created: timedelta, signs: timedelta) -> StoredKey:
    return StoredKey(SigningKey.generate(), generation, T0 + created, T0 + signs)


def test_a_key_set_over_time() -> None:
    first = _key(1, timedelta(0), timedelta(0))
    second = _key(2, timedelta(days=7) - timedelta(minutes=10), timedelta(days=7))
    keys = KeySet((first, second))
    before = T0 + timedelta(days=7) - timedelta(minutes=1)
    assert keys.signing(before) is first
    assert keys.published(before, POLICY) == [first, second]  # published before it signs
    assert not keys.rotation_due(before, POLICY)  # one is under way
    switch = T0 + timedelta(days=7)
    assert keys.signing(switch) is second
    lifetime = POLICY.token_lifetime  # 15 min + the verifiers' leeway
    assert keys.published(switch + lifetime - timedelta(seconds=1), POLICY) == [first, second]
    assert keys.published(switch + lifetime, POLICY) == [second]
    assert keys.prunable(switch + lifetime, POLICY) == []
    assert keys.prunable(switch + lifetime + timedelta(days=1), POLICY) == [first.key.kid]
    assert keys.rotation_due(switch + timedelta(days=7) - timedelta(minutes=10), POLICY)
    assert not keys.rotation_due(switch + timedelta(days=6), POLICY)


def test_replicas_rotating_at_once_make_one_key(
    database_url: str, personal_data: PersonalData, tmp_path: Path
) -> None:
    database = Database(database_url)
    database.migrate(MIGRATIONS)
    clock = ManualClock()
    try:
        first = SigningKeys(database, personal_data, clock)
        second = SigningKeys(database, personal_data, clock)
        first.ensure()
        assert not second._insert(1, clock.now(), clock.now())  # the first key exists
        second.ensure()
        stale = first.reload()
        assert first._insert(2, clock.now(), clock.now() + POLICY.publish_lead)
        assert not second._insert(stale.newest.generation + 1, clock.now(), clock.now())
        assert first.rotate().key.kid == second.rotate().key.kid
        with database.reading() as session:
            generations = session.scalars(select(signing_keys.c.generation)).all()
        assert sorted(generations) == [1, 2]
    finally:
        database.dispose()


def test_the_jwks_file_is_written_whole_and_follows_the_key_set(
    database_url: str, personal_data: PersonalData, tmp_path: Path
) -> None:
    database = Database(database_url)
    database.migrate(MIGRATIONS)
    clock = ManualClock()
    target = tmp_path / "gateway" / "jwks.json"
    try:
        keys = SigningKeys(database, personal_data, clock, POLICY, jwks_file=target)
        keys.ensure()
        written = json.loads(target.read_text())
        assert written == {"keys": list(keys.public_jwks())}
        assert written["keys"][0]["kty"] == "OKP" and written["keys"][0]["crv"] == "Ed25519"
        pending = keys.rotate()
        assert [k["kid"] for k in json.loads(target.read_text())["keys"]][-1] == pending.key.kid
        assert sorted(p.name for p in target.parent.iterdir()) == ["jwks.json"]
    finally:
        database.dispose()


def test_keys_made_before_rotation_existed_are_migrated(
    database_url: str, personal_data: PersonalData
) -> None:
    database = Database(database_url)
    clock = ManualClock()
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with database.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
        key = SigningKey.generate()
        with database.engine.begin() as connection:
            connection.execute(
                text("INSERT INTO signing_keys (kid, private_key, created_at) VALUES (:k, :p, :c)"),
                {
                    "k": key.kid,
                    "p": personal_data.encrypt(
                        key.private_pem().decode(), "signing_keys.private_key"
                    ),
                    "c": clock.now().replace(tzinfo=None) - timedelta(hours=8),
                },
            )
        database.migrate(MIGRATIONS)
        keys = SigningKeys(database, personal_data, clock)
        assert keys.current().kid == key.kid
        assert [k["kid"] for k in keys.public_jwks()] == [key.kid]
    finally:
        database.dispose()


def test_a_key_auth_stops_publishing_is_refused_outside_auth_once_the_cache_time_passed(
    platform: Platform,
) -> None:
    """Binding's verifier follows auth's GetPublicKeys as the gateway's JWKS cache does: a
    key auth no longer publishes works for at most the cache time (ETAX_JWKS_CACHE_SECONDS,
    300 s) after binding's last fetch, then never again, remembered tokens included."""
    clock = platform.clock
    database = Database(platform.settings.database_url_for("auth"))
    try:
        old = SigningKeys(database, PersonalData(platform.settings.platform.keyring()), clock)
        old_key = old.current()
    finally:
        database.dispose()
    person = platform.person()
    claims = AccessClaims(
        person_id=person.person_id,
        session_id="s-1",
        entry=types_pb2.ENTRY_NATURAL_PERSON,
        province="37",
        real_name_level=4,
    )
    # Whoever holds the old private key signs a long-lived token: binding checks it once
    # and remembers it.
    stolen, _ = TokenIssuer(old_key, clock, ttl=timedelta(hours=3)).issue(claims)

    def pending(token: str) -> object:
        return platform.binding.ListMyPendingConfirmations(
            binding_pb2.ListMyPendingConfirmationsRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )

    pending(stolen)
    rotated = platform.internal.RotateSigningKey(auth_pb2.RotateSigningKeyRequest(), timeout=10)
    policy = KeyPolicy(
        access_token_ttl=timedelta(seconds=platform.settings.access_token_ttl_seconds)
    )
    withdrawn_at = from_timestamp(rotated.signs_from) + policy.token_lifetime
    cache = timedelta(seconds=platform.settings.platform.jwks_cache_seconds)

    # Binding's copy is refreshed a minute before auth withdraws the old key ...
    clock.advance(withdrawn_at - timedelta(minutes=1) - clock.now())
    pending(stolen)
    # ... so for the rest of the cache time the old key still works, as at the gateway ...
    clock.advance(timedelta(minutes=2))
    assert old_key.kid not in [
        k.kid for k in platform.auth.GetPublicKeys(auth_pb2.GetPublicKeysRequest(), timeout=10).keys
    ]
    pending(stolen)
    # ... and not once the copy is older than that.
    clock.advance(cache - timedelta(minutes=1))
    assert failure_of(pending, stolen).reason == "UNAUTHENTICATED"
    fresh, _ = TokenIssuer(old_key, clock).issue(claims)
    assert failure_of(pending, fresh).reason == "UNAUTHENTICATED"
    # Tokens of the key auth signs with now still pass.
    assert pending(platform.login(person).access_token) is not None
