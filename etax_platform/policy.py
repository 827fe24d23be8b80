"""Who may call each RPC, as the contract says, and who is calling this one.

Every etax RPC declares `option (etax.common.v1.policy)` in its proto (DESIGN.md, "Policy
in the contract"): anonymous, a session, a trusted APP's session, or internal systems only,
and the gateway flood guard it falls under. The gateway generates its routes, jwt_authn
rules and rate limits from these options (`etax_platform.gateway`), and the server
interceptor of every service enforces the same options (`etax_platform.server`), so no list
of method names exists anywhere else.

The interceptor puts what it verified in context variables for the call: servicers ask
`caller()` for the verified session and `province_for(...)` for the province of the bureau
the request came through (A3), instead of reading metadata themselves.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from etax.common.v1 import policy_pb2
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool

from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.identifiers import require_province
from etax_platform.revocation import RevocationList
from etax_platform.tokens import ISSUER, AccessClaims, TokenVerifier

# Headers only the gateway sets (it removes them from every request first).
PROVINCE_HEADER = "x-etax-province"
GATEWAY_HEADER = "x-etax-gateway"


class Access(enum.IntEnum):
    """etax.common.v1.Access without the prefix."""

    UNSPECIFIED = policy_pb2.ACCESS_UNSPECIFIED
    ANONYMOUS = policy_pb2.ACCESS_ANONYMOUS
    SESSION = policy_pb2.ACCESS_SESSION
    TRUSTED_APP_SESSION = policy_pb2.ACCESS_TRUSTED_APP_SESSION
    INTERNAL = policy_pb2.ACCESS_INTERNAL


class FloodGuard(enum.IntEnum):
    """etax.common.v1.FloodGuard without the prefix."""

    NONE = policy_pb2.FLOOD_GUARD_UNSPECIFIED
    LOGIN = policy_pb2.FLOOD_GUARD_LOGIN
    CODE = policy_pb2.FLOOD_GUARD_CODE


@dataclass(frozen=True)
class RpcPolicy:
    service: str  # etax.auth.v1.AuthService
    method: str  # StartLogin
    access: Access
    flood_guard: FloodGuard
    server_streaming: bool
    client_streaming: bool

    @property
    def full_name(self) -> str:
        return f"{self.service}/{self.method}"

    @property
    def path(self) -> str:
        """The gRPC path, /etax.auth.v1.AuthService/StartLogin."""
        return f"/{self.full_name}"

    @property
    def public(self) -> bool:
        """Routed by the public listener."""
        return self.access not in (Access.INTERNAL, Access.UNSPECIFIED)

    @property
    def needs_session(self) -> bool:
        return self.access in (Access.SESSION, Access.TRUSTED_APP_SESSION)


def _policy(
    service: str, name: str, options: descriptor_pb2.MethodOptions, streams: tuple[bool, bool]
) -> RpcPolicy:
    # The generated stubs type extensions loosely; the option is a MethodPolicy.
    extension: Any = policy_pb2.policy
    declared: policy_pb2.MethodPolicy = options.Extensions[extension]
    return RpcPolicy(
        service=service,
        method=name,
        access=Access(declared.access),
        flood_guard=FloodGuard(declared.flood_guard),
        server_streaming=streams[0],
        client_streaming=streams[1],
    )


def contract_policies(files: descriptor_pb2.FileDescriptorSet) -> list[RpcPolicy]:
    """Every etax RPC of a descriptor set (the gateway's input), in declaration order."""
    return [
        _policy(
            f"{file.package}.{service.name}",
            method.name,
            method.options,
            (method.server_streaming, method.client_streaming),
        )
        for file in files.file
        if file.package.startswith("etax.")
        for service in file.service
        for method in service.method
    ]


def service_policies(service_name: str) -> list[RpcPolicy]:
    """The policies of one service of the generated code (what a server registers)."""
    found: descriptor.ServiceDescriptor = descriptor_pool.Default().FindServiceByName(service_name)
    return [
        _policy(
            service_name,
            method.name,
            method.GetOptions(),
            (method.server_streaming, method.client_streaming),
        )
        for method in found.methods
    ]


def undeclared(policies: Iterable[RpcPolicy]) -> list[str]:
    """RPCs without a policy: a contract with any is refused (start-up, tests, gateway)."""
    return [p.full_name for p in policies if p.access is Access.UNSPECIFIED]


# --- who is calling -------------------------------------------------------------------


@dataclass(frozen=True)
class CallContext:
    """What the interceptor established about the current call."""

    claims: AccessClaims | None = None
    # The bearer token as presented (a trusted APP's token is read by its RPC).
    token: str | None = None
    # The province of the gateway the request came through; "" for direct callers.
    gateway_province: str = ""


_NOBODY = CallContext()
_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "etax_call", default=None
)


def _call() -> CallContext:
    return _current.get() or _NOBODY


class calling:
    """`with calling(context):` makes it the current call's context. A class, not a
    generator: it wraps every RPC, and @contextmanager costs twice as much."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: CallContext) -> None:
        self._context = context

    def __enter__(self) -> None:
        self._token = _current.set(self._context)

    def __exit__(self, *_exc: object) -> None:
        _current.reset(self._token)


def caller() -> AccessClaims:
    """The verified, unrevoked session of a session-bearing RPC (the interceptor checked
    it before the servicer runs); UNAUTHENTICATED anywhere else."""
    claims = _call().claims
    if claims is None:
        raise DomainError(Reason.UNAUTHENTICATED)
    return claims


def optional_caller() -> AccessClaims | None:
    """The session an anonymous RPC was called with, if it presented a valid one."""
    return _call().claims


def presented_token() -> str | None:
    return _call().token


def province_for(requested: str, field: str = "province", *, required: bool) -> str:
    """A3: the province of the bureau the request came through. The gateway says so (a
    client cannot: the gateway overwrites the header); a direct caller names it in the
    request. A request naming another province than its gateway's is refused."""
    through = _call().gateway_province
    if requested.strip():
        province = require_province(requested.strip(), field)
        if through and through != province:
            raise invalid(field, message="请在所选省份的电子税务局办理")
        return province
    if through:
        return require_province(through, field)
    if required:
        return require_province("", field)
    return ""


# --- verifying sessions ---------------------------------------------------------------


class SessionAuthenticator:
    """Verifies the access token of a call: signature and expiry (`TokenVerifier`), then
    global revocation (`RevocationList`). `trusted_issuers` maps another issuer to a check
    of its tokens (auth trusts the personal income tax APP for QR login, Q17)."""

    def __init__(
        self,
        verifier: TokenVerifier,
        revocations: RevocationList,
        trusted_issuers: Mapping[str, Callable[[str], object]] | None = None,
    ) -> None:
        self.verifier = verifier
        self.revocations = revocations
        self._trusted = dict(trusted_issuers or {})

    def session(self, token: str) -> AccessClaims:
        claims = self.verifier.verify(token)
        if self.revocations.is_revoked(claims.session_id):
            raise DomainError(Reason.UNAUTHENTICATED)
        return claims

    def trusted_app(self, token: str) -> AccessClaims | None:
        """The claims of one of auth's sessions, or None for a trusted APP's valid token."""
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            raise DomainError(Reason.UNAUTHENTICATED) from None
        if issuer == ISSUER:
            return self.session(token)
        check = self._trusted.get(str(issuer))
        if check is None:
            raise DomainError(Reason.UNAUTHENTICATED)
        check(token)
        return None

    def close(self) -> None:
        self.revocations.close()
