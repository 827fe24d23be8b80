"""Wiring of the auth service: settings in, a ready GrpcHost out."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
from etax.auth.v1 import auth_pb2_grpc

from etax_platform.clients import open_channel
from etax_platform.clock import Clock, SystemClock
from etax_platform.db import Database
from etax_platform.kv import KeyValueStore, open_store
from etax_platform.pii import PersonalData
from etax_platform.server import GrpcHost, Registration
from etax_platform.tokens import TokenVerifier
from services.auth.account import AccountCenter
from services.auth.dependencies import FaceChecks, SmsCodes
from services.auth.internal import InternalAccounts
from services.auth.keys import SigningKeys
from services.auth.passwords import PasswordHasher
from services.auth.registration import Registrations
from services.auth.servicer import AccountServicer, InternalAuthServicer
from services.auth.settings import AuthSettings
from services.auth.storage import AccountStore

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ACCOUNT_SERVICE = "etax.auth.v1.AccountService"
INTERNAL_AUTH_SERVICE = "etax.auth.v1.InternalAuthService"


def build(
    settings: AuthSettings,
    *,
    clock: Clock | None = None,
    store: KeyValueStore | None = None,
    sms_channel: grpc.Channel | None = None,
    face_channel: grpc.Channel | None = None,
) -> GrpcHost:
    """The auth service's server, not yet started. Tests pass their own clock, store and
    channels to the SMS and face services (real servers on port 0)."""
    clock = clock or SystemClock()
    store = store or open_store(settings.platform.kv_url)
    sms_channel = sms_channel or open_channel(settings.sms_target)
    face_channel = face_channel or open_channel(settings.face_target)
    database = Database(settings.database_url_for("auth"))
    database.migrate(MIGRATIONS)
    personal_data = PersonalData(settings.platform.keyring())
    keys = SigningKeys(database, personal_data, clock)
    keys.ensure()
    hasher = PasswordHasher(settings.hash_workers)
    accounts = AccountStore(database, personal_data)
    sms = SmsCodes(sms_channel, settings.call_timeout_seconds)
    face = FaceChecks(face_channel, settings.call_timeout_seconds)

    registrations = Registrations(
        accounts=accounts,
        kv=store,
        personal_data=personal_data,
        sms=sms,
        face=face,
        hasher=hasher,
        clock=clock,
        ttl=timedelta(seconds=settings.registration_ttl_seconds),
    )
    account = AccountCenter(accounts=accounts, sms=sms, face=face, hasher=hasher, clock=clock)
    internal = InternalAccounts(accounts=accounts, clock=clock)
    verifier = TokenVerifier(keys.public_jwks, clock)

    account_servicer = AccountServicer(registrations, account, verifier, clock)
    internal_servicer = InternalAuthServicer(internal, clock)
    return GrpcHost(
        [
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
        host=settings.host,
        port=settings.port,
        max_workers=settings.max_workers,
        grace_seconds=settings.grace_seconds,
        on_stop=[
            hasher.close,
            database.dispose,
            store.close,
            sms_channel.close,
            face_channel.close,
        ],
    )
