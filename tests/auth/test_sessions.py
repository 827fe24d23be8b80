"""Sessions: refresh tokens (single use, rotated, theft detection, expiry), logout and
revocation, access-token lifetime, signing keys (publication before signing, rotation by
time and by the internal trigger, the JWKS file)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import grpc
import jwt
from etax.auth.v1 import auth_pb2
from etax.binding.v1 import binding_pb2
from etax.common.v1 import types_pb2

from tests.auth.conftest import failure_of
from tests.auth.platform import Platform, bearer


def _refresh(platform: Platform, token: str) -> auth_pb2.Session:
    return platform.auth.RefreshSession(
        auth_pb2.RefreshSessionRequest(refresh_token=token), timeout=10
    ).session


def _profile(platform: Platform, session: auth_pb2.Session) -> auth_pb2.Profile:
    return platform.server.account.GetProfile(
        auth_pb2.GetProfileRequest(), metadata=bearer(session), timeout=10
    ).profile


def _kid(session: auth_pb2.Session) -> str:
    return str(jwt.get_unverified_header(session.access_token)["kid"])


def _published(platform: Platform) -> list[str]:
    keys = platform.auth.GetPublicKeys(auth_pb2.GetPublicKeysRequest(), timeout=10).keys
    return [k.kid for k in keys]


def test_refresh_rotates_the_token_and_keeps_the_session(platform: Platform) -> None:
    person = platform.person()
    session = platform.login(person)
    platform.clock.advance(timedelta(minutes=14))
    refreshed = _refresh(platform, session.refresh_token)
    assert refreshed.session_id == session.session_id
    assert refreshed.refresh_token != session.refresh_token
    assert refreshed.access_token != session.access_token
    assert refreshed.identity == session.identity
    assert jwt.decode(refreshed.access_token, options={"verify_signature": False})["amr"] == [
        "pwd",
        "sms",
    ]
    assert (
        refreshed.refresh_token_expires_at.seconds - session.refresh_token_expires_at.seconds
        == (14 * 60)
    )
    platform.clock.advance(timedelta(minutes=10))  # the first access token has expired
    assert failure_of(_profile, platform, session).reason == "UNAUTHENTICATED"
    assert _profile(platform, refreshed).person_id == person.person_id


def test_a_used_refresh_token_shown_again_revokes_the_session(platform: Platform) -> None:
    session = platform.login(platform.person())
    refreshed = _refresh(platform, session.refresh_token)
    stolen = failure_of(_refresh, platform, session.refresh_token)
    assert (stolen.code, stolen.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    # Both holders lose it: the newer refresh token and the access tokens stop working.
    assert failure_of(_refresh, platform, refreshed.refresh_token).reason == "UNAUTHENTICATED"
    assert failure_of(_profile, platform, refreshed).reason == "UNAUTHENTICATED"
    revoked = platform.audit(action="session.refresh", session_id=session.session_id)
    assert [e["reason"] for e in revoked][-2:] == [
        "refresh_token_reused",
        "refresh_token_revoked",
    ]


def test_refresh_tokens_expire_after_twelve_hours(platform: Platform) -> None:
    session = platform.login(platform.person())
    platform.clock.advance(timedelta(hours=12))
    assert failure_of(_refresh, platform, session.refresh_token).reason == "UNAUTHENTICATED"
    assert failure_of(_refresh, platform, "no-such-token").reason == "UNAUTHENTICATED"


def test_logout_ends_the_session(platform: Platform) -> None:
    person = platform.person()
    session = platform.login(person)
    other = platform.login(person)
    platform.auth.Logout(auth_pb2.LogoutRequest(), metadata=bearer(session), timeout=10)
    assert failure_of(_profile, platform, session).reason == "UNAUTHENTICATED"
    assert failure_of(_refresh, platform, session.refresh_token).reason == "UNAUTHENTICATED"
    assert _profile(platform, other).person_id == person.person_id  # another session lives
    # The refresh token alone is enough to end a session (the access token may be gone).
    platform.auth.Logout(auth_pb2.LogoutRequest(refresh_token=other.refresh_token), timeout=10)
    assert failure_of(_profile, platform, other).reason == "UNAUTHENTICATED"
    nobody = failure_of(platform.auth.Logout, auth_pb2.LogoutRequest(), timeout=10)
    assert nobody.reason == "UNAUTHENTICATED"


def test_f3_switching_identity_retires_the_earlier_refresh_token(platform: Platform) -> None:
    session = platform.login(platform.person())
    switched = platform.auth.SwitchIdentity(
        auth_pb2.SwitchIdentityRequest(
            identity=binding_pb2.Identity(entry=types_pb2.ENTRY_NATURAL_PERSON)
        ),
        metadata=bearer(session),
        timeout=10,
    ).session
    assert failure_of(_refresh, platform, session.refresh_token).reason == "UNAUTHENTICATED"
    # Shown again after the switch it counts as reuse: the session is gone.
    assert failure_of(_refresh, platform, switched.refresh_token).reason == "UNAUTHENTICATED"


def test_keys_are_published_before_they_sign_and_kept_until_their_tokens_expire(
    platform: Platform,
) -> None:
    person = platform.person()
    first = platform.login(person)
    (old_kid,) = _published(platform)
    assert _kid(first) == old_kid
    jwks_file = platform.settings.jwks_path()
    assert [k["kid"] for k in json.loads(jwks_file.read_text())["keys"]] == [old_kid]
    # Rotation is due 7 days after the key began signing, less the publication lead.
    platform.clock.advance(timedelta(days=7) - timedelta(minutes=10))
    published = _published(platform)
    assert len(published) == 2 and published[0] == old_kid
    new_kid = published[1]
    assert [k["kid"] for k in json.loads(jwks_file.read_text())["keys"]] == published
    during_lead = platform.login(person)
    assert _kid(during_lead) == old_kid  # published, not yet signing
    platform.clock.advance(timedelta(minutes=10))
    after = platform.login(person)
    assert _kid(after) == new_kid
    assert _profile(platform, during_lead).person_id == person.person_id
    # The old key stays published while its last tokens can be valid, then goes.
    platform.clock.advance(timedelta(minutes=15))
    assert _published(platform) == [old_kid, new_kid]
    platform.clock.advance(timedelta(minutes=2))
    assert _published(platform) == [new_kid]
    assert [k["kid"] for k in json.loads(jwks_file.read_text())["keys"]] == [new_kid]
    assert _profile(platform, platform.login(person)).person_id == person.person_id


def test_rotation_on_the_internal_trigger(platform: Platform) -> None:
    person = platform.person()
    (old_kid,) = _published(platform)
    rotated = platform.internal.RotateSigningKey(auth_pb2.RotateSigningKeyRequest(), timeout=10)
    assert rotated.signs_from.seconds - int(platform.clock.now().timestamp()) == 600
    again = platform.internal.RotateSigningKey(auth_pb2.RotateSigningKeyRequest(), timeout=10)
    assert again.kid == rotated.kid  # one rotation at a time
    assert _published(platform) == [old_kid, rotated.kid]
    assert _kid(platform.login(person)) == old_kid
    platform.clock.advance(timedelta(minutes=10))
    session = platform.login(person)
    assert _kid(session) == rotated.kid
    # Binding fetches the new key on its own and accepts the token.
    platform.binding.ListMyIdentities(
        binding_pb2.ListMyIdentitiesRequest(), metadata=bearer(session), timeout=10
    )


def test_a_second_replica_signs_with_the_same_keys(platform: Platform) -> None:
    person = platform.person()
    second = platform.second_server()
    rotated = platform.internal.RotateSigningKey(auth_pb2.RotateSigningKeyRequest(), timeout=10)
    platform.clock.advance(timedelta(minutes=10))
    started = platform.start(person.document, server=second)
    platform.send_code(started.challenge_id)
    session = platform.complete_with_code(started.challenge_id, platform.last_code(person.phone))
    assert _kid(session) == rotated.kid
    keys = second.auth.GetPublicKeys(auth_pb2.GetPublicKeysRequest(), timeout=10).keys
    assert rotated.kid in [k.kid for k in keys]
    assert _profile(platform, session).person_id == person.person_id


def test_concurrent_refreshes_with_one_token_give_one_session_at_most(platform: Platform) -> None:
    session = platform.login(platform.person())

    def refresh(_: int) -> str:
        try:
            return _refresh(platform, session.refresh_token).refresh_token
        except grpc.RpcError:
            return ""

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(refresh, range(10)))
    winners = [token for token in outcomes if token]
    assert len(winners) == 1
    # The losers showed a used token: theft detection ended the session for everyone.
    assert failure_of(_refresh, platform, winners[0]).reason == "UNAUTHENTICATED"
