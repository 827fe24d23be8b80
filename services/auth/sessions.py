"""Sessions (A3, F3): access tokens, refresh tokens, revocation, identity switching.

- Access token: an Ed25519 JWT (etax_platform.tokens) with the claims of DESIGN.md, valid
  `access_token_ttl` (15 min), signed by the key `SigningKeys` says signs now.
- Refresh token: `secrets.token_urlsafe(32)`, stored only as its SHA-256, single use: each
  RefreshSession marks it used and issues the next one (same session). A used token shown
  again means two holders; the whole session is revoked (theft detection).
- RefreshSession is one statement on PostgreSQL (`_REFRESH`, a data-modifying CTE): it
  consumes the token, checks the session, inserts the next token and the audit row and
  returns what the answer needs; only a token it could not consume takes a second one
  (unknown, or reused: the session is revoked). SQLite, which has no data-modifying CTEs,
  runs the same steps as a transaction; both behave alike (tests/auth/test_sessions.py).
- Revocation (logout, theft, password reset): the session row is marked in the same
  transaction as the rest of the change (all or nothing). Every service refuses the
  session's access tokens within a second (global revocation, `etax_platform.revocation`):
  this process knows at once, the others through `revoked_since` (auth's replicas) and
  `InternalAuthService.ListRevokedSessions` (every other service).
- The session records the province it came through (A3); persons are not per province.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from etax.binding.v1 import binding_pb2
from sqlalchemy import Connection, select, update

from etax_platform.clock import Clock
from etax_platform.db import Database, Statement
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.pii import PersonalData, mask_name
from etax_platform.revocation import RevocationList, Revocations
from etax_platform.tokens import AccessClaims, TokenIssuer, TokenVerifier
from services.auth.audit import AuditEvent, AuditLog
from services.auth.keys import SigningKeys
from services.auth.models import audit_events, persons, refresh_tokens, sessions
from services.auth.storage import AlsoWrite

_NAME = "persons.name"
_ID_BYTES = 16
_MAX_REFRESH_TOKEN = 128
WEB = "etax-web"


def encode_identity(identity: binding_pb2.Identity) -> str:
    return base64.b64encode(identity.SerializeToString()).decode()


def decode_identity(encoded: str) -> binding_pb2.Identity:
    return binding_pb2.Identity.FromString(base64.b64decode(encoded))


def _token_hash(token: str) -> str:
    # The token has 256 random bits: a plain hash is as good as a keyed one here.
    return hashlib.sha256(token.encode()).hexdigest()


# RefreshSession on PostgreSQL in one round trip. Every sub-statement sees the snapshot
# the statement started with; the token's UPDATE decides between concurrent refreshes
# (the loser waits for the row and finds it used). First column: ok, expired or revoked;
# no row: the token was not consumed here (unknown, or used before: `_REUSED`).
_REFRESH = Statement(
    postgresql="""
WITH used AS (
    UPDATE refresh_tokens SET used_at = %(now)s
    WHERE token_hash = %(token_hash)s AND used_at IS NULL
    RETURNING session_id, expires_at
), live AS (
    SELECT s.id, s.person_id, s.province, s.identity, s.methods, s.client_app, s.entry,
           p.name, p.real_name_level
    FROM used
    JOIN sessions s ON s.id = used.session_id
    JOIN persons p ON p.id = s.person_id
    WHERE used.expires_at > %(now)s AND s.revoked_at IS NULL
), next_token AS (
    INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at)
    SELECT %(next_hash)s, id, %(now)s, %(next_expires_at)s FROM live
), touched AS (
    UPDATE sessions SET last_issued_at = %(now)s FROM live WHERE sessions.id = live.id
), audit AS (
    INSERT INTO audit_events (event_id, occurred_at, action, outcome, person_id, session_id,
                              entry, province, request_id)
    SELECT %(event_id)s, %(now)s, %(action)s, 'ok', person_id, id, entry, province,
           %(request_id)s
    FROM live
)
SELECT 'ok', id, person_id, province, identity, methods, client_app, name, real_name_level
FROM live
UNION ALL
SELECT CASE WHEN used.expires_at <= %(now)s THEN 'expired' ELSE 'revoked' END,
       used.session_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM used
WHERE NOT EXISTS (SELECT 1 FROM live)
""",
    writes=True,
)
# A token _REFRESH did not consume: unknown, or shown again after its use, which revokes
# its session (a statement of its own: it must see the use that committed meanwhile).
_REUSED = Statement(
    postgresql="""
WITH known AS (
    SELECT session_id FROM refresh_tokens WHERE token_hash = %(token_hash)s
), revoked AS (
    UPDATE sessions SET revoked_at = %(now)s, revoked_reason = 'refresh_token_reused'
    WHERE id IN (SELECT session_id FROM known) AND revoked_at IS NULL
)
SELECT session_id FROM known
""",
    writes=True,
)


# A new session's row (also what the bench's bulk loader writes: bench/bulk.py).
NEW_SESSION_COLUMNS = (
    "id",
    "person_id",
    "province",
    "identity",
    "entry",
    "methods",
    "client_app",
    "created_at",
    "last_issued_at",
)
_AUDIT_COLUMNS = tuple(column.name for column in audit_events.columns if column.name != "id")


@functools.cache
def _open_statement(also: str | None) -> Statement:
    """A new session on PostgreSQL in one statement: its row, its first refresh token and
    its audit row, with the CTE of a write that goes with it (AlsoWrite). The foreign keys
    are checked at the end of the statement, when the session row is there."""
    sessions_ = ", ".join(NEW_SESSION_COLUMNS)
    audit = ", ".join(_AUDIT_COLUMNS)
    return Statement(
        postgresql=f"""
WITH {f"{also}," if also else ""} new_session AS (
    INSERT INTO sessions ({sessions_})
    VALUES ({", ".join(f"%(s_{c})s" for c in NEW_SESSION_COLUMNS)})
), new_token AS (
    INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at)
    VALUES (%(t_hash)s, %(s_id)s, %(s_created_at)s, %(t_expires_at)s)
), audit AS (
    INSERT INTO audit_events ({audit}) VALUES ({", ".join(f"%(a_{c})s" for c in _AUDIT_COLUMNS)})
)
SELECT 1
""",  # noqa: S608 - column names of our own tables, values as parameters
        writes=True,
    )


@dataclass(frozen=True)
class _SessionRow:
    """What a reissue needs of a session and its person."""

    id: str
    person_id: str
    province: str
    identity: str
    methods: str
    client_app: str
    name: str
    real_name_level: int


@dataclass(frozen=True)
class Principal:
    """Who a new session is for, as its response shows them."""

    person_id: str
    masked_name: str
    real_name_level: int


@dataclass(frozen=True)
class IssuedSession:
    session_id: str
    access_token: str
    access_expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime
    identity: binding_pb2.Identity
    person_id: str
    masked_name: str
    real_name_level: int
    province: str


@dataclass(frozen=True)
class SessionPolicy:
    access_token_ttl: timedelta = timedelta(minutes=15)
    refresh_token_ttl: timedelta = timedelta(hours=12)

    @property
    def revocation_retention(self) -> timedelta:
        """How long a revoked session's access token can still be presented: an access
        token is accepted up to 30 s after exp (etax_platform.tokens), and a margin."""
        return self.access_token_ttl + timedelta(minutes=2)


def claims_for(
    principal: Principal,
    *,
    session_id: str,
    identity: binding_pb2.Identity,
    province: str,
    methods: tuple[str, ...],
    client_app: str,
    extra: dict[str, Any] | None = None,
) -> AccessClaims:
    return AccessClaims(
        person_id=principal.person_id,
        session_id=session_id,
        entry=identity.entry,
        province=province,
        real_name_level=principal.real_name_level,
        methods=methods,
        enterprise_code=identity.enterprise_code,
        role=identity.role,
        subject_type=identity.subject_type,
        project_number=identity.project_number,
        agency_code=identity.agency_code,
        client_code=identity.client_code,
        client_app=client_app,
        extra=extra or {},
    )


class Sessions:
    def __init__(
        self,
        *,
        database: Database,
        personal_data: PersonalData,
        keys: SigningKeys,
        audit: AuditLog,
        clock: Clock,
        policy: SessionPolicy,
        revocation_poll_seconds: float = 0.25,
    ) -> None:
        self._db = database
        self._pd = personal_data
        self._keys = keys
        self._audit = audit
        self._clock = clock
        self.policy = policy
        self.verifier = TokenVerifier(keys.public_jwks, clock)
        self._issuer: TokenIssuer | None = None
        self.revocations = RevocationList(
            self.revoked_since, poll_seconds=revocation_poll_seconds, name="auth-revocations"
        )

    # --- issuing ---------------------------------------------------------------------------

    def _sign(self, claims: AccessClaims) -> tuple[str, datetime]:
        key = self._keys.current()
        issuer = self._issuer
        if issuer is None or issuer.key is not key:
            # One issuer per signing key (its JWS header encoded once), not one per token.
            issuer = self._issuer = TokenIssuer(key, self._clock, self.policy.access_token_ttl)
        return issuer.issue(claims)

    def _new_refresh_token(self, session: Connection, session_id: str, now: datetime) -> str:
        token = secrets.token_urlsafe(32)
        self._insert_refresh_token(session, session_id, token, now)
        return token

    def _insert_refresh_token(
        self, session: Connection, session_id: str, token: str, now: datetime
    ) -> None:
        session.execute(
            refresh_tokens.insert().values(
                token_hash=_token_hash(token),
                session_id=session_id,
                issued_at=now,
                expires_at=now + self.policy.refresh_token_ttl,
            )
        )

    def open(
        self,
        principal: Principal,
        identity: binding_pb2.Identity,
        province: str,
        methods: tuple[str, ...],
        event: AuditEvent,
        *,
        client_app: str = WEB,
        extra_claims: dict[str, Any] | None = None,
        also: AlsoWrite | None = None,
    ) -> IssuedSession:
        """A new session: its row, its first refresh token, the audit event and `also`
        (a phone re-affirmed by the login, say), all or nothing: one statement on
        PostgreSQL (`_open_statement`), one transaction on SQLite."""
        now = self._clock.now()
        session_id = secrets.token_hex(_ID_BYTES)
        event.session_id = session_id
        refresh_token = secrets.token_urlsafe(32)
        values = {
            "id": session_id,
            "person_id": principal.person_id,
            "province": province,
            "identity": encode_identity(identity),
            "entry": identity.entry,
            "methods": ",".join(methods),
            "client_app": client_app,
            "created_at": now,
            "last_issued_at": now,
        }
        if self._db.is_sqlite or (also is not None and also.cte is None):
            with self._db.transaction() as session:
                if also is not None:
                    also.run(session)
                session.execute(sessions.insert().values(**values))
                self._insert_refresh_token(session, session_id, refresh_token, now)
                self._audit.insert(session, event)
        else:
            audit = self._audit.row(event, now)
            self._db.run(
                _open_statement(None if also is None else also.cte),
                {
                    **{f"s_{name}": value for name, value in values.items()},
                    "t_hash": _token_hash(refresh_token),
                    "t_expires_at": now + self.policy.refresh_token_ttl,
                    **{f"a_{name}": value for name, value in audit.items()},
                    **({} if also is None else also.params),
                },
            )
            self._audit.written_by_statement(event)
        claims = claims_for(
            principal,
            session_id=session_id,
            identity=identity,
            province=province,
            methods=methods,
            client_app=client_app,
            extra=extra_claims,
        )
        return self._issued(principal, claims, identity, refresh_token, now)

    def _issued(
        self,
        principal: Principal,
        claims: AccessClaims,
        identity: binding_pb2.Identity,
        refresh_token: str,
        now: datetime,
    ) -> IssuedSession:
        """The signed access token beside the refresh token, as the response shows them."""
        access_token, access_expires_at = self._sign(claims)
        return IssuedSession(
            session_id=claims.session_id,
            access_token=access_token,
            access_expires_at=access_expires_at,
            refresh_token=refresh_token,
            refresh_expires_at=now + self.policy.refresh_token_ttl,
            identity=identity,
            person_id=principal.person_id,
            masked_name=principal.masked_name,
            real_name_level=principal.real_name_level,
            province=claims.province,
        )

    def _session_row(self, session: Connection, session_id: str) -> Any:
        return session.execute(
            select(
                sessions.c.id,
                sessions.c.person_id,
                sessions.c.province,
                sessions.c.identity,
                sessions.c.methods,
                sessions.c.client_app,
                sessions.c.entry,
                sessions.c.revoked_at,
                persons.c.real_name_level,
                persons.c.name,
            )
            .join(persons, persons.c.id == sessions.c.person_id)
            .where(sessions.c.id == session_id)
        ).first()

    def _reissue(
        self,
        row: _SessionRow | Any,
        identity: binding_pb2.Identity,
        refresh_token: str,
        now: datetime,
    ) -> IssuedSession:
        principal = Principal(
            row.person_id, mask_name(self._pd.decrypt(row.name, _NAME)), row.real_name_level
        )
        methods = tuple(m for m in row.methods.split(",") if m)
        claims = claims_for(
            principal,
            session_id=row.id,
            identity=identity,
            province=row.province,
            methods=methods,
            client_app=row.client_app,
        )
        return self._issued(principal, claims, identity, refresh_token, now)

    # --- refresh ---------------------------------------------------------------------------

    def refresh(self, refresh_token: str) -> IssuedSession:
        """RefreshSession: single use, rotated; a reused token revokes the session."""
        if not refresh_token or len(refresh_token) > _MAX_REFRESH_TOKEN:
            raise invalid("refresh_token")
        now = self._clock.now()
        token_hash = _token_hash(refresh_token)
        event = AuditEvent("session.refresh")
        next_token = secrets.token_urlsafe(32)
        if self._db.is_sqlite:
            outcome, session_id, row = self._refresh_in_transaction(
                token_hash, next_token, now, event
            )
        else:
            outcome, session_id, row = self._refresh_in_one_statement(
                token_hash, next_token, now, event
            )
        event.session_id = session_id
        if outcome == "reused" and session_id:
            self.revoked([session_id])
        if row is None:
            event.outcome, event.reason = "refused", f"refresh_token_{outcome}"
            self._audit.record(event)
            raise DomainError(Reason.UNAUTHENTICATED, metadata={"field": "refresh_token"})
        return self._reissue(row, decode_identity(row.identity), next_token, now)

    def _refresh_in_one_statement(
        self, token_hash: str, next_token: str, now: datetime, event: AuditEvent
    ) -> tuple[str, str | None, _SessionRow | None]:
        """PostgreSQL: `_REFRESH`, and `_REUSED` for a token it could not consume."""
        audit = self._audit.row(event, now)
        rows = self._db.run(
            _REFRESH,
            {
                "now": now,
                "token_hash": token_hash,
                "next_hash": _token_hash(next_token),
                "next_expires_at": now + self.policy.refresh_token_ttl,
                "event_id": audit["event_id"],
                "action": audit["action"],
                "request_id": audit["request_id"],
            },
        )
        if not rows:
            known = self._db.run(_REUSED, {"token_hash": token_hash, "now": now})
            return ("reused", known[0][0], None) if known else ("unknown", None, None)
        outcome, session_id, *columns = rows[0]
        if outcome != "ok":
            return outcome, session_id, None
        self._audit.written_by_statement(event)  # the CTE inserted its row
        person_id, province, identity, methods, client_app, name, level = columns
        return (
            "ok",
            session_id,
            _SessionRow(
                session_id, person_id, province, identity, methods, client_app, name, level
            ),
        )

    def _refresh_in_transaction(
        self, token_hash: str, next_token: str, now: datetime, event: AuditEvent
    ) -> tuple[str, str | None, _SessionRow | None]:
        """SQLite: the steps of `_REFRESH` and `_REUSED`, in one transaction."""
        with self._db.transaction() as session:
            used = session.execute(
                update(refresh_tokens)
                .where(
                    refresh_tokens.c.token_hash == token_hash, refresh_tokens.c.used_at.is_(None)
                )
                .values(used_at=now)
                .returning(refresh_tokens.c.session_id, refresh_tokens.c.expires_at)
            ).first()
            if used is None:
                known = session.scalar(
                    select(refresh_tokens.c.session_id).where(
                        refresh_tokens.c.token_hash == token_hash
                    )
                )
                if known is None:
                    return "unknown", None, None
                self._revoke_in(session, [known], "refresh_token_reused", now)
                return "reused", known, None
            if used.expires_at <= now:
                return "expired", used.session_id, None
            row = self._session_row(session, used.session_id)
            if row is None or row.revoked_at is not None:
                return "revoked", used.session_id, None
            event.session_id = row.id
            event.person_id = row.person_id
            event.province = row.province
            event.entry = row.entry
            self._insert_refresh_token(session, row.id, next_token, now)
            session.execute(
                update(sessions).where(sessions.c.id == row.id).values(last_issued_at=now)
            )
            self._audit.insert(session, event)
            return (
                "ok",
                row.id,
                _SessionRow(
                    row.id,
                    row.person_id,
                    row.province,
                    row.identity,
                    row.methods,
                    row.client_app,
                    row.name,
                    row.real_name_level,
                ),
            )

    # --- identity switching (F3, F5) ----------------------------------------------------------

    def switch(
        self, claims: AccessClaims, identity: binding_pb2.Identity, event: AuditEvent
    ) -> IssuedSession:
        """New tokens for the same session acting as `identity`; earlier refresh tokens of
        the session stop working (shown again, they count as reuse)."""
        now = self._clock.now()
        with self._db.transaction() as session:
            changed = session.execute(
                update(sessions)
                .where(sessions.c.id == claims.session_id, sessions.c.revoked_at.is_(None))
                .values(
                    identity=encode_identity(identity), entry=identity.entry, last_issued_at=now
                )
            )
            row = self._session_row(session, claims.session_id) if _count(changed) else None
            if row is None:
                issued = None
            else:
                session.execute(
                    update(refresh_tokens)
                    .where(
                        refresh_tokens.c.session_id == row.id, refresh_tokens.c.used_at.is_(None)
                    )
                    .values(used_at=now)
                )
                new_token = self._new_refresh_token(session, row.id, now)
                self._audit.insert(session, event)
                issued = self._reissue(row, identity, new_token, now)
        if issued is None:
            raise DomainError(Reason.UNAUTHENTICATED)
        return issued

    # --- revocation ------------------------------------------------------------------------

    def _revoke_in(
        self, session: Connection, session_ids: list[str], reason: str, now: datetime
    ) -> None:
        session.execute(
            update(sessions)
            .where(sessions.c.id.in_(session_ids), sessions.c.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason=reason)
        )

    def revoke_person_in(self, session: Connection, person_id: str, reason: str) -> list[str]:
        """Revokes every session of the person in the caller's transaction; returns those
        whose access tokens may still be valid (pass them to `revoked` after commit)."""
        now = self._clock.now()
        revoked = session.execute(
            update(sessions)
            .where(sessions.c.person_id == person_id, sessions.c.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason=reason)
            .returning(sessions.c.id, sessions.c.last_issued_at)
        ).all()
        recent = now - self.policy.revocation_retention
        return [row.id for row in revoked if row.last_issued_at > recent]

    def revoked(self, session_ids: list[str]) -> None:
        """Sessions whose revocation just committed: refused in this process at once."""
        self.revocations.add(session_ids, self.policy.revocation_retention)

    def revoked_since(self, since: datetime | None) -> Revocations:
        """The revocation feed: sessions revoked at or after `since` (default: every one
        whose access tokens may still be presented)."""
        now = self._clock.now()
        retention = self.policy.revocation_retention
        start = max(since, now - retention) if since is not None else now - retention
        with self._db.reading() as connection:
            ids = connection.scalars(
                select(sessions.c.id).where(sessions.c.revoked_at >= start)
            ).all()
        return Revocations(session_ids=ids, as_of=now, retain_for=retention)

    def logout(self, claims: AccessClaims | None, refresh_token: str) -> None:
        """Ends the session of the access token and, if given, the refresh token's."""
        if refresh_token and len(refresh_token) > _MAX_REFRESH_TOKEN:
            raise invalid("refresh_token")
        now = self._clock.now()
        with self._db.transaction() as session:
            ids = [] if claims is None else [claims.session_id]
            if refresh_token:
                by_token = session.scalar(
                    select(refresh_tokens.c.session_id).where(
                        refresh_tokens.c.token_hash == _token_hash(refresh_token)
                    )
                )
                if by_token is not None:
                    ids.append(by_token)
            if not ids:
                raise DomainError(Reason.UNAUTHENTICATED, metadata={"field": "refresh_token"})
            ids = list(dict.fromkeys(ids))
            owners = dict(
                session.execute(
                    select(sessions.c.id, sessions.c.person_id).where(sessions.c.id.in_(ids))
                ).all()
            )
            self._revoke_in(session, ids, "logout", now)
            for session_id in ids:
                event = AuditEvent(
                    "session.revoke",
                    session_id=session_id,
                    person_id=owners.get(session_id, claims.person_id if claims else None),
                    detail={"why": "logout"},
                )
                self._audit.insert(session, event)
        self.revoked(ids)

    # --- callers ---------------------------------------------------------------------------

    def verify(self, token: str) -> AccessClaims:
        """The claims of one of auth's access tokens whose session is not revoked."""
        claims = self.verifier.verify(token)
        if self.revocations.is_revoked(claims.session_id):
            raise DomainError(Reason.UNAUTHENTICATED)
        return claims


def _count(result: Any) -> int:
    return int(result.rowcount)
