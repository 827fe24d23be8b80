"""QR login (扫码登录, D3, Q14, Q17): a logged-in APP hands its person and business to a
web page.

1. The web page: CreateQrLogin(province) -> a ticket in the key-value store, WAITING for
   `qr_login_ttl` (120 s), shown as `etaxqr2.<id>.<expiry ms>.<key id>.<mac>` (the id has
   128 random bits; the mac, an HMAC under auth's QR-login key named by the key id, lets
   garbage be refused without a store read; ETAX_AUTH_QR_KEYS rotate on their own).
2. The APP scans it and calls ConfirmQrLogin with its own access token: a session of the
   tax bureau (its entry, enterprise, role, project or agent client are copied; binding
   checks them again for the web page's province, so an ended relation does not pass), or
   a token of the personal income tax APP (个人所得税 APP, Q17), a configured trusted
   issuer whose tokens name the person by document; those log in as natural person.
3. The web page polls GetQrLogin: the first call after the confirmation opens the session
   and returns it; later calls say COLLECTED. WAITING -> CONFIRMED -> COLLECTED are
   compare-and-set transitions, so a ticket is confirmed once and collected once.
"""

from __future__ import annotations

import enum
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from etax.binding.v1 import binding_pb2

from etax_platform.clock import Clock, from_millis, to_millis
from etax_platform.documents import Document, parse_document
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.keyrings import HmacKeyring
from etax_platform.kv import KeyValueStore
from etax_platform.pii import mask_name
from etax_platform.tokens import ISSUER
from services.auth import metrics
from services.auth.audit import AuditEvent, AuditLog, detail_of
from services.auth.dependencies import Bindings
from services.auth.domain import require_enterprise_business, require_id
from services.auth.login import NATURAL_PERSON, QR_METHOD
from services.auth.sessions import (
    IssuedSession,
    Principal,
    Sessions,
    decode_identity,
    encode_identity,
)
from services.auth.storage import AccountStore

_PREFIX = "etaxqr2"
_MAC_PURPOSE = "qr-login"
_MAC_CHARS = 32
_LEEWAY = timedelta(seconds=30)
_TRUSTED_ALGORITHMS = ["EdDSA", "ES256", "RS256"]
IIT_APP = "iit-app"


class QrState(enum.IntEnum):
    """etax.auth.v1.QrLoginState."""

    WAITING = 1
    CONFIRMED = 2
    EXPIRED = 3
    COLLECTED = 4


@dataclass(frozen=True)
class TrustedIssuer:
    """The personal income tax APP's tokens: its issuer name, audience and key set.

    Its access tokens name the person by `document_type` (the tax system's code, e.g. 201)
    and `document_number` claims, since its person ids are not ours."""

    issuer: str
    audience: str
    keys: jwt.PyJWKSet

    @staticmethod
    def load(issuer: str, audience: str, jwks_json: str, jwks_file: Path | None) -> TrustedIssuer:
        text = jwks_json or (jwks_file.read_text() if jwks_file is not None else "")
        return TrustedIssuer(issuer, audience, jwt.PyJWKSet.from_json(text))

    def document(self, token: str, now: datetime) -> Document:
        unauthenticated = DomainError(Reason.UNAUTHENTICATED)
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.keys[kid] if kid else self.keys.keys[0]
            claims = jwt.decode(
                token,
                key.key,
                algorithms=_TRUSTED_ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "require": ["exp", "document_type", "document_number"],
                },
            )
        except (jwt.PyJWTError, KeyError, IndexError) as error:
            raise unauthenticated from error
        if not int(claims["exp"]) + _LEEWAY.total_seconds() > now.timestamp():
            raise unauthenticated
        try:
            return parse_document(int(claims["document_type"]), str(claims["document_number"]))
        except (DomainError, ValueError) as error:
            raise unauthenticated from error


@dataclass(frozen=True)
class CreatedQrLogin:
    qr_login_id: str
    qr_payload: str
    expires_at: datetime


@dataclass(frozen=True)
class QrLoginView:
    state: QrState
    session: IssuedSession | None = None


def _unverified_issuer(token: str) -> str:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return ""
    return str(claims.get("iss", ""))


class QrLogins:
    def __init__(
        self,
        *,
        store: KeyValueStore,
        keyring: HmacKeyring,
        accounts: AccountStore,
        bindings: Bindings,
        sessions: Sessions,
        audit: AuditLog,
        clock: Clock,
        ttl: timedelta,
        trusted: TrustedIssuer | None,
    ) -> None:
        self._store = store
        self._keyring = keyring
        self._accounts = accounts
        self._bindings = bindings
        self._sessions = sessions
        self._audit = audit
        self._clock = clock
        self._ttl = ttl
        self._trusted = trusted

    @staticmethod
    def _key(qr_login_id: str) -> str:
        return f"auth:qr:{qr_login_id}"

    @property
    def _store_ttl(self) -> timedelta:
        return self._ttl * 2 + timedelta(minutes=1)

    def _sign(self, qr_login_id: str, expires_ms: int) -> str:
        """<key id>.<mac>, under the active key."""
        key_id, mac = self._keyring.sign(_MAC_PURPOSE, f"{qr_login_id}.{expires_ms}")
        return f"{key_id}.{mac[:_MAC_CHARS]}"

    def create(self, province: str) -> CreatedQrLogin:
        qr_login_id = secrets.token_hex(16)
        expires_at = self._clock.now() + self._ttl
        expires_ms = to_millis(expires_at)
        record = {"state": int(QrState.WAITING), "province": province, "expires_ms": expires_ms}
        self._store.create(self._key(qr_login_id), json.dumps(record).encode(), self._store_ttl)
        payload = f"{_PREFIX}.{qr_login_id}.{expires_ms}.{self._sign(qr_login_id, expires_ms)}"
        metrics.QR_LOGINS.labels("created", "ok", "").inc()
        return CreatedQrLogin(qr_login_id, payload, from_millis(expires_ms))

    def _open_payload(self, payload: str) -> str:
        bad = DomainError(Reason.TICKET_INVALID, metadata={"field": "qr_payload"})
        parts = payload.strip().split(".")
        # ASCII digits, as many as a millisecond time has: str.isdigit() alone lets through
        # superscripts int() refuses and more digits than int() converts (found by the fuzzer).
        expiry = parts[2] if len(parts) == 5 else ""
        if parts[0] != _PREFIX or not (expiry.isascii() and expiry.isdigit() and len(expiry) <= 15):
            raise bad
        qr_login_id, expires_ms, key_id, mac = parts[1], int(parts[2]), parts[3], parts[4]
        # A key dropped from the keyring no longer verifies (its codes expired long ago).
        signed = f"{qr_login_id}.{expires_ms}"
        if len(mac) != _MAC_CHARS or not self._keyring.verify(key_id, _MAC_PURPOSE, signed, mac):
            raise bad
        if to_millis(self._clock.now()) >= expires_ms:
            raise bad
        return qr_login_id

    # --- the APP confirms ------------------------------------------------------------------

    def _app_person(self, token: str, province: str) -> tuple[str, binding_pb2.Identity, str]:
        """(person id, identity for the web page, which APP) from the APP's token."""
        issuer = _unverified_issuer(token)
        if issuer == ISSUER:
            claims = self._sessions.verify(token)
            if claims.entry == NATURAL_PERSON:
                return (
                    claims.person_id,
                    binding_pb2.Identity(entry=NATURAL_PERSON),
                    claims.client_app,
                )
            person = self._accounts.person(claims.person_id)
            if person is None:
                raise DomainError(Reason.UNAUTHENTICATED)
            require_enterprise_business(person.overseas_restricted)
            target = binding_pb2.Target(
                entry=claims.entry,  # type: ignore[arg-type]
                enterprise_code=claims.enterprise_code,
                agency_code=claims.agency_code,
                client_code=claims.client_code,
                subject_type=claims.subject_type,  # type: ignore[arg-type]
                subject_number=claims.project_number,
                province=province,
            )
            identity = self._bindings.check_access(claims.person_id, target)
            return claims.person_id, identity, claims.client_app
        if self._trusted is not None and issuer == self._trusted.issuer:
            document = self._trusted.document(token, self._clock.now())
            person_id = self._accounts.person_id_for_document(document)
            if person_id is None:
                raise DomainError(Reason.USER_NOT_REGISTERED)
            return person_id, binding_pb2.Identity(entry=NATURAL_PERSON), IIT_APP
        raise DomainError(Reason.UNAUTHENTICATED)

    def confirm(self, token: str | None, qr_payload: str) -> None:
        if not token:
            raise DomainError(Reason.UNAUTHENTICATED)
        if not qr_payload:
            raise invalid("qr_payload", message="请扫描网页上的二维码")
        qr_login_id = self._open_payload(qr_payload)
        with self._audit.attempt("qr.confirm", method="qr") as event:
            current = self._store.get(self._key(qr_login_id))
            if current is None:
                raise DomainError(Reason.TICKET_INVALID, metadata={"field": "qr_payload"})
            province = json.loads(current.value)["province"]
            event.province = province
            person_id, identity, app = self._app_person(token, province)
            event.person_id = person_id
            event.entry = identity.entry
            event.detail.update({**detail_of(identity), "app": app})
            person = self._accounts.person(person_id)
            if person is None:
                raise DomainError(Reason.UNAUTHENTICATED)
            now = self._clock.now()

            def confirm(raw: bytes | None) -> tuple[bytes | None, DomainError | None]:
                if raw is None:
                    return None, DomainError(
                        Reason.TICKET_INVALID, metadata={"field": "qr_payload"}
                    )
                record: dict[str, Any] = json.loads(raw)
                if record["state"] != QrState.WAITING or to_millis(now) >= record["expires_ms"]:
                    return raw, DomainError(
                        Reason.TICKET_INVALID, "二维码已被使用或已失效", {"field": "qr_payload"}
                    )
                record.update(
                    state=int(QrState.CONFIRMED),
                    # The web page collects within another ticket lifetime.
                    expires_ms=to_millis(now + self._ttl),
                    person_id=person_id,
                    masked_name=mask_name(person.name),
                    real_name_level=person.real_name_level,
                    identity=encode_identity(identity),
                    app=app,
                )
                return json.dumps(record).encode(), None

            refused = self._store.update(self._key(qr_login_id), confirm, self._store_ttl)
            if refused is not None:
                raise refused

    # --- the web page collects ---------------------------------------------------------------

    def get(self, qr_login_id: str) -> QrLoginView:
        require_id(qr_login_id, "qr_login_id")
        now = self._clock.now()

        def collect(raw: bytes | None) -> tuple[bytes | None, dict[str, Any] | None]:
            if raw is None:
                return None, None
            record: dict[str, Any] = json.loads(raw)
            if record["state"] == QrState.CONFIRMED and to_millis(now) < record["expires_ms"]:
                collected = {**record, "state": int(QrState.COLLECTED)}
                return json.dumps(collected).encode(), {**record, "collect": True}
            return raw, record

        record = self._store.update(self._key(qr_login_id), collect, self._store_ttl)
        if record is None:
            raise DomainError(Reason.TICKET_INVALID, metadata={"field": "qr_login_id"})
        if record.get("collect"):
            return QrLoginView(QrState.CONFIRMED, self._open(record))
        state = QrState(record["state"])
        if state != QrState.COLLECTED and to_millis(now) >= record["expires_ms"]:
            return QrLoginView(QrState.EXPIRED)
        return QrLoginView(state)

    def _open(self, record: dict[str, Any]) -> IssuedSession:
        identity = decode_identity(record["identity"])
        event = AuditEvent(
            "login.complete",
            person_id=record["person_id"],
            entry=identity.entry,
            province=record["province"],
            method="qr",
            detail={**detail_of(identity), "app": record["app"]},
        )
        return self._sessions.open(
            Principal(record["person_id"], record["masked_name"], record["real_name_level"]),
            identity,
            record["province"],
            (QR_METHOD,),
            event,
        )
