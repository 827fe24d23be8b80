"""Session checks for test doubles of the services: a real `SessionAuthenticator` over a
key set and a revocation list the test controls (every host verifies sessions)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta

import jwt

from etax_platform.clock import SystemClock
from etax_platform.policy import SessionAuthenticator
from etax_platform.revocation import RevocationList, Revocations
from etax_platform.tokens import AccessClaims, TokenVerifier

RETAIN = timedelta(minutes=17)


def authenticator(
    keys: Callable[[], Sequence[Mapping[str, str]]],
    revoked: Callable[[], Sequence[str]] = list,
) -> SessionAuthenticator:
    clock = SystemClock()
    return SessionAuthenticator(
        TokenVerifier(keys, clock),
        RevocationList(lambda _since: Revocations(list(revoked()), clock.now(), RETAIN)),
    )


class _GatewayVerified(SessionAuthenticator):
    """For doubles behind the gateway under test: Envoy verified the token (that is what
    the test is about), so the double reads its claims without checking them again."""

    def session(self, token: str) -> AccessClaims:
        return AccessClaims.from_jwt_claims(jwt.decode(token, options={"verify_signature": False}))

    def trusted_app(self, token: str) -> AccessClaims | None:
        claims = jwt.decode(token, options={"verify_signature": False})
        return AccessClaims.from_jwt_claims(claims) if "sid" in claims else None


def trusting_authenticator() -> SessionAuthenticator:
    return _GatewayVerified(
        TokenVerifier(list, SystemClock()),
        RevocationList(lambda _since: Revocations([], SystemClock().now(), RETAIN)),
    )
