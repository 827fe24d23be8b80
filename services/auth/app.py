"""Wiring of the auth service: settings in, a ready GrpcHost out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import grpc
from etax.auth.v1 import auth_pb2_grpc

from etax_platform.clients import open_channel
from etax_platform.clock import Clock, SystemClock
from etax_platform.db import Database
from etax_platform.kv import KeyValueStore
from etax_platform.pii import PersonalData
from etax_platform.policy import SessionAuthenticator
from etax_platform.server import GrpcHost, Registration
from services.auth.account import AccountCenter
from services.auth.audit import AuditLog
from services.auth.checks import Checks
from services.auth.credentials import PasswordCheck
from services.auth.dependencies import Bindings, FaceChecks, SmsCodes
from services.auth.flows import Flows
from services.auth.internal import InternalAccounts
from services.auth.keys import KeyPolicy, SigningKeys
from services.auth.legacy import LegacyLogins
from services.auth.lockout import Lockout
from services.auth.login import Logins, Switching
from services.auth.lookup import AccountLookup
from services.auth.passwords import PasswordHasher
from services.auth.qr_login import QrLogins, TrustedIssuer
from services.auth.recovery import Recovery
from services.auth.registration import Registrations
from services.auth.servicer import AccountServicer, AuthServicer, InternalAuthServicer
from services.auth.sessions import SessionPolicy, Sessions
from services.auth.settings import AuthSettings
from services.auth.steps import PersonSteps
from services.auth.storage import AccountStore

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
AUTH_SERVICE = "etax.auth.v1.AuthService"
ACCOUNT_SERVICE = "etax.auth.v1.AccountService"
INTERNAL_AUTH_SERVICE = "etax.auth.v1.InternalAuthService"


def build(
    settings: AuthSettings,
    *,
    clock: Clock | None = None,
    store: KeyValueStore | None = None,
    sms_channel: grpc.Channel | None = None,
    face_channel: grpc.Channel | None = None,
    binding_channel: grpc.Channel | None = None,
) -> GrpcHost:
    """The auth service's server, not yet started. Tests pass their own clock, store and
    channels to the SMS, face and binding services (real servers on port 0)."""
    clock = clock or SystemClock()
    # What the host opens itself it closes on stop; what the caller passes, the caller does.
    owned: list[Callable[[], None]] = []
    if store is None:
        store = settings.platform.open_store()
        owned.append(store.close)
    if sms_channel is None:
        sms_channel = open_channel(settings.sms_target)
        owned.append(sms_channel.close)
    if face_channel is None:
        face_channel = open_channel(settings.face_target)
        owned.append(face_channel.close)
    if binding_channel is None:
        binding_channel = open_channel(settings.binding_target)
        owned.append(binding_channel.close)
    database = Database(settings.database_url_for("auth"), settings.database_pool())
    database.migrate(MIGRATIONS)
    personal_data = PersonalData(settings.platform.keyring())
    access_ttl = timedelta(seconds=settings.access_token_ttl_seconds)
    keys = SigningKeys(
        database,
        personal_data,
        clock,
        KeyPolicy(
            access_token_ttl=access_ttl,
            publish_lead=timedelta(seconds=settings.key_publish_lead_seconds),
            rotation_interval=timedelta(seconds=settings.key_rotation_seconds),
            reload_interval=timedelta(seconds=settings.key_reload_seconds),
        ),
        jwks_file=settings.jwks_path(),
    )
    keys.ensure()
    hasher = PasswordHasher(settings.hash_workers)
    accounts = AccountStore(database, personal_data)
    timeout = settings.call_timeout_seconds
    sms = SmsCodes(sms_channel, timeout)
    face = FaceChecks(face_channel, timeout)
    bindings = Bindings(binding_channel, timeout)
    audit = AuditLog(
        database,
        clock,
        journal_dir=settings.platform.journal_path(),
        batch_seconds=settings.audit_batch_seconds,
    )
    lockout = Lockout(store, clock)
    checks = Checks(lockout=lockout, sms=sms, face=face, audit=audit)
    steps = PersonSteps(accounts=accounts, checks=checks, sms=sms, face=face)
    passwords = PasswordCheck(accounts, hasher, clock)
    lookup = AccountLookup(accounts)
    sessions = Sessions(
        database=database,
        personal_data=personal_data,
        keys=keys,
        audit=audit,
        clock=clock,
        policy=SessionPolicy(
            access_token_ttl=access_ttl,
            refresh_token_ttl=timedelta(seconds=settings.refresh_token_ttl_seconds),
        ),
        revocation_poll_seconds=settings.revocation_poll_seconds,
    )

    def flows(kind: str, ttl_seconds: int, id_field: str) -> Flows:
        return Flows(store, clock, kind, timedelta(seconds=ttl_seconds), id_field)

    logins = Logins(
        accounts=accounts,
        lookup=lookup,
        passwords=passwords,
        checks=checks,
        steps=steps,
        bindings=bindings,
        face=face,
        sessions=sessions,
        challenges=flows("login", settings.login_challenge_ttl_seconds, "challenge_id"),
        audit=audit,
        clock=clock,
    )
    legacy = LegacyLogins(
        database=database,
        accounts=accounts,
        hasher=hasher,
        checks=checks,
        bindings=bindings,
        sessions=sessions,
        audit=audit,
        clock=clock,
        closes_at=settings.legacy_login_closes_at,
    )
    trusted = (
        TrustedIssuer.load(
            settings.iit_issuer,
            settings.iit_audience,
            settings.iit_jwks_json,
            settings.iit_jwks_file,
        )
        if settings.iit_issuer
        else None
    )
    qr = QrLogins(
        store=store,
        keyring=settings.qr_keyring(),
        accounts=accounts,
        bindings=bindings,
        sessions=sessions,
        audit=audit,
        clock=clock,
        ttl=timedelta(seconds=settings.qr_login_ttl_seconds),
        trusted=trusted,
    )
    recovery = Recovery(
        database=database,
        accounts=accounts,
        lookup=lookup,
        passwords=passwords,
        hasher=hasher,
        checks=checks,
        steps=steps,
        lockout=lockout,
        sms=sms,
        sessions=sessions,
        resets=flows("password-reset", settings.recovery_ttl_seconds, "reset_id"),
        recoveries=flows("phone-recovery", settings.recovery_ttl_seconds, "recovery_id"),
        unlocks=flows("face-unlock", settings.recovery_ttl_seconds, "unlock_id"),
        audit=audit,
        clock=clock,
    )
    switching = Switching(accounts=accounts, bindings=bindings, sessions=sessions, audit=audit)

    registrations = Registrations(
        accounts=accounts,
        kv=store,
        personal_data=personal_data,
        sms=sms,
        face=face,
        hasher=hasher,
        clock=clock,
        ttl=timedelta(seconds=settings.registration_ttl_seconds),
        audit=audit,
    )
    account = AccountCenter(
        accounts=accounts, sms=sms, face=face, hasher=hasher, clock=clock, audit=audit
    )
    internal = InternalAccounts(accounts=accounts, clock=clock)

    auth_servicer = AuthServicer(
        logins=logins,
        legacy=legacy,
        qr=qr,
        sessions=sessions,
        switching=switching,
        recovery=recovery,
        keys=keys,
    )
    account_servicer = AccountServicer(registrations, account, clock)
    internal_servicer = InternalAuthServicer(internal, legacy, keys, sessions, clock)
    # Sessions of the personal income tax APP may confirm a QR login (Q17).
    trusted_issuers = (
        {trusted.issuer: lambda token: trusted.document(token, clock.now())}
        if trusted is not None
        else {}
    )
    authenticator = SessionAuthenticator(sessions.verifier, sessions.revocations, trusted_issuers)
    return GrpcHost.for_service(
        settings,
        [
            Registration(
                AUTH_SERVICE,
                lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(
                    auth_servicer, server
                ),
            ),
            Registration(
                ACCOUNT_SERVICE,
                lambda server: auth_pb2_grpc.add_AccountServiceServicer_to_server(
                    account_servicer, server
                ),
            ),
            Registration(
                INTERNAL_AUTH_SERVICE,
                lambda server: auth_pb2_grpc.add_InternalAuthServiceServicer_to_server(
                    internal_servicer, server
                ),
            ),
        ],
        authenticator=authenticator,
        on_stop=[hasher.close, audit.close, database.dispose, *owned],
    )
