"""Access tokens: Ed25519-signed JWTs (EdDSA) that every service verifies itself.

Auth issues them (and owns key storage and rotation); Envoy checks them at the gateway,
and each service checks them again, since internal callers bypass the gateway. Expiry is
checked against the injected clock, not the wall clock, so tests can move time.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import grpc
import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from etax_platform.clock import Clock
from etax_platform.errors import DomainError, Reason

ISSUER = "etax-auth"
AUDIENCE = "etax"
_ALGORITHM = "EdDSA"
_LEEWAY = timedelta(seconds=30)
_REMEMBER_AT_MOST = 10_000


@dataclass(frozen=True)
class AccessClaims:
    """What an access token says (DESIGN.md, "Tokens")."""

    person_id: str
    session_id: str
    entry: int  # etax.common.v1.Entry
    province: str
    real_name_level: int
    methods: tuple[str, ...] = ()
    enterprise_code: str = ""
    role: int = 0  # etax.common.v1.Role
    subject_type: int = 0
    project_number: str = ""
    agency_code: str = ""
    client_code: str = ""
    # The APP that holds the session (D3, Q17): "etax-web", "etax-app", "iit-app".
    client_app: str = "etax-web"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_jwt_claims(self) -> dict[str, Any]:
        # Field by field: dataclasses.asdict deep-copies, at several times the cost.
        return {
            "sub": self.person_id,
            "sid": self.session_id,
            "amr": list(self.methods),
            "entry": self.entry,
            "province": self.province,
            "real_name_level": self.real_name_level,
            "enterprise_code": self.enterprise_code,
            "role": self.role,
            "subject_type": self.subject_type,
            "project_number": self.project_number,
            "agency_code": self.agency_code,
            "client_code": self.client_code,
            "client_app": self.client_app,
            **self.extra,
        }

    @staticmethod
    def from_jwt_claims(claims: Mapping[str, Any]) -> AccessClaims:
        known = {
            "entry",
            "province",
            "real_name_level",
            "enterprise_code",
            "role",
            "subject_type",
            "project_number",
            "agency_code",
            "client_code",
            "client_app",
        }
        reserved = {"sub", "sid", "amr", "iss", "aud", "iat", "nbf", "exp", "jti"}
        return AccessClaims(
            person_id=str(claims["sub"]),
            session_id=str(claims["sid"]),
            methods=tuple(claims.get("amr", ())),
            extra={k: v for k, v in claims.items() if k not in known | reserved},
            **{k: claims[k] for k in known if k in claims},
        )


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey

    @staticmethod
    def generate() -> SigningKey:
        return SigningKey(uuid.uuid4().hex[:16], Ed25519PrivateKey.generate())

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @staticmethod
    def from_pem(kid: str, pem: bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("signing keys must be Ed25519")
        return SigningKey(kid, key)

    def public_jwk(self) -> dict[str, str]:
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": x,
            "kid": self.kid,
            "alg": _ALGORITHM,
            "use": "sig",
        }


class TokenIssuer:
    def __init__(self, key: SigningKey, clock: Clock, ttl: timedelta = timedelta(minutes=15)):
        self.key = key
        self._clock = clock
        self.ttl = ttl
        self._header = _b64(orjson.dumps({"alg": _ALGORITHM, "kid": key.kid, "typ": "JWT"}))

    def issue(self, claims: AccessClaims) -> tuple[str, datetime]:
        now = self._clock.now()
        expires = now + self.ttl
        payload = {
            **claims.to_jwt_claims(),
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": secrets.token_hex(16),
        }
        return self._encode(payload), expires

    def _encode(self, payload: dict[str, Any]) -> str:
        """A compact JWS (RFC 7515) signed with EdDSA, as jwt.encode makes it, written out
        here because PyJWT's generic path costs twice the signature itself (bench/). orjson
        writes the compact UTF-8 JSON json.dumps would, at a twentieth of its CPU."""
        signing_input = self._header + b"." + _b64(orjson.dumps(payload))
        signature = self.key.private_key.sign(signing_input)
        return (signing_input + b"." + _b64(signature)).decode("ascii")


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _public_key(jwk: Mapping[str, str]) -> Ed25519PublicKey:
    raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    return Ed25519PublicKey.from_public_bytes(raw)


class TokenVerifier:
    """Verifies access tokens against the published key set, as a JWKS cache does.

    The copy of the key set is fetched again when it is older than `cache_seconds` by the
    injected clock (the gateway's JWKS cache time, 300 s by default): key ids no longer
    published are dropped, and so are remembered tokens signed with them. A key id the
    copy lacks makes it fetch at once, at most once every `_REFRESH_AT_MOST_EVERY` seconds;
    after a failed fetch the next one waits as long. While one thread fetches, the others
    use the copy they have; if the key service cannot be reached, the copy is kept until
    it can be.
    """

    _REFRESH_AT_MOST_EVERY = 5.0  # seconds (monotonic)

    def __init__(
        self,
        fetch_keys: Callable[[], Sequence[Mapping[str, str]]],
        clock: Clock,
        cache_seconds: float = 300.0,
    ) -> None:
        if cache_seconds <= 0:
            raise ValueError("cache_seconds must be positive")
        self._fetch_keys = fetch_keys
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._published: dict[str, str] = {}  # kid -> its public "x", to see a kid reused
        self._fetched_at: float | None = None  # clock seconds of the last successful fetch
        self._tried_at = float("-inf")  # monotonic seconds of the last fetch
        self._last_failed = False
        self._fetching = threading.Lock()
        # token -> (expiry, kid, claims) of tokens whose signature was checked; changed
        # under _remembering, so no token is remembered for a key that was just dropped.
        self._verified: dict[str, tuple[int, str, AccessClaims]] = {}
        self._remembering = threading.Lock()

    def _stale(self, now: float) -> bool:
        fetched = self._fetched_at
        return fetched is None or not 0 <= now - fetched < self._cache_seconds

    def _refresh(self, now: float, wanted: str | None = None) -> None:
        """Fetches the key set again if still due: it is stale, or `wanted` is missing."""
        # Without a copy, or for a kid it lacks, the caller waits for the fetch.
        if not self._fetching.acquire(blocking=wanted is not None or self._fetched_at is None):
            return
        try:
            due = wanted not in self._keys if wanted is not None else self._stale(now)
            since = time.monotonic() - self._tried_at
            throttled = (wanted is not None or self._last_failed) and (
                since < self._REFRESH_AT_MOST_EVERY
            )
            if not due:
                return
            if throttled:
                # The last fetch failed, or ran a moment ago: without the keys this token
                # needs, the key service is what is missing, not a valid token.
                if self._last_failed and (self._fetched_at is None or wanted is not None):
                    raise DomainError(Reason.PROVIDER_UNAVAILABLE)
                return
            self._tried_at = time.monotonic()
            try:
                fetched = self._fetch_keys()
            except (grpc.RpcError, DomainError) as error:
                self._last_failed = True
                if self._fetched_at is None or wanted is not None:
                    raise DomainError(Reason.PROVIDER_UNAVAILABLE) from error
                return  # keep the copy; tried again in _REFRESH_AT_MOST_EVERY
            self._last_failed = False
            self._install(fetched, now)
        finally:
            self._fetching.release()

    def _install(self, fetched: Sequence[Mapping[str, str]], now: float) -> None:
        published = {k["kid"]: k["x"] for k in fetched if k.get("crv") == "Ed25519"}
        keys = {
            kid: self._keys[kid] if self._published.get(kid) == x else _public_key({"x": x})
            for kid, x in published.items()
        }
        with self._remembering:
            old = self._keys
            self._keys, self._published, self._fetched_at = keys, published, now
            # Forget tokens whose key is no longer published (or was replaced under its kid).
            dropped = [
                token
                for token, (_, kid, _) in self._verified.items()
                if keys.get(kid) is not old.get(kid)
            ]
            for token in dropped:
                del self._verified[token]

    def _key(self, kid: str, now: float) -> Ed25519PublicKey | None:
        key = self._keys.get(kid)
        if key is None:
            self._refresh(now, wanted=kid)
            key = self._keys.get(kid)
        return key

    def verify(self, token: str) -> AccessClaims:
        """The token's claims if its signature holds and it has not expired by the clock.

        A verified token is remembered until it expires or its key stops being published:
        an APP calls many RPCs with one token, and the signature check is the dearest part
        of a cheap call. Revoking a session is auth's business, checked where it matters.
        """
        now = self._clock.now().timestamp()
        if self._stale(now):
            self._refresh(now)
        remembered = self._verified.get(token)
        if remembered is not None and remembered[0] + _LEEWAY.total_seconds() > now:
            return remembered[2]
        expires, kid, key, claims = self._verify_signature(token, now)
        with self._remembering:
            if self._keys.get(kid) is key:  # not dropped meanwhile
                if len(self._verified) >= _REMEMBER_AT_MOST:
                    self._verified.clear()  # simpler than LRU, and rare: tokens live 15 minutes
                self._verified[token] = (expires, kid, claims)
        return claims

    def _verify_signature(
        self, token: str, now: float
    ) -> tuple[int, str, Ed25519PublicKey, AccessClaims]:
        unauthenticated = DomainError(Reason.UNAUTHENTICATED)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise unauthenticated from error
        kid = str(header.get("kid", ""))
        key = self._key(kid, now)
        if key is None or header.get("alg") != _ALGORITHM:
            raise unauthenticated
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[_ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "require": ["exp", "sub", "sid"],
                },
            )
        except jwt.PyJWTError as error:
            raise unauthenticated from error
        expires = int(claims["exp"])
        if not expires + _LEEWAY.total_seconds() > now:
            raise unauthenticated
        return expires, kid, key, AccessClaims.from_jwt_claims(claims)


def bearer_token(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return None


def require_claims(verifier: TokenVerifier, context: grpc.ServicerContext) -> AccessClaims:
    """The verified caller of a public RPC that needs a session; UNAUTHENTICATED otherwise."""
    token = bearer_token(context)
    if not token:
        raise DomainError(Reason.UNAUTHENTICATED)
    return verifier.verify(token)
