"""Wiring of the binding service: used by `python -m services.binding` and by tests."""

from __future__ import annotations

from pathlib import Path

import grpc
from etax.binding.v1 import binding_pb2, binding_pb2_grpc

from etax_platform.clients import open_channel
from etax_platform.clock import Clock, SystemClock
from etax_platform.db import Database
from etax_platform.keyrings import HmacKeyring
from etax_platform.pii import PersonalData
from etax_platform.policy import SessionAuthenticator
from etax_platform.revocation import RevocationList
from etax_platform.server import GrpcHost, Registration
from etax_platform.tokens import TokenVerifier
from services.binding.service import Auth, BindingService
from services.binding.servicer import BindingServicer, InternalBindingServicer
from services.binding.settings import BindingSettings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
PUBLIC_SERVICE = binding_pb2.DESCRIPTOR.services_by_name["BindingService"].full_name
INTERNAL_SERVICE = binding_pb2.DESCRIPTOR.services_by_name["InternalBindingService"].full_name


def build(
    settings: BindingSettings,
    *,
    clock: Clock | None = None,
    auth_channel: grpc.Channel | None = None,
    personal_data: PersonalData | None = None,
    index_keys: HmacKeyring | None = None,
) -> GrpcHost:
    """The binding host, not yet started; its schema is migrated to the newest version.

    `auth_channel` defaults to a channel to `settings.auth_target`, closed on stop.
    `personal_data` seals documents and names (the platform's PII keys, without their
    blind-index key); `index_keys` are binding's own blind-index keys (settings').
    """
    clock = clock or SystemClock()
    personal_data = personal_data or PersonalData(settings.platform.keyring(blind_index=False))
    database = Database(settings.database_url_for("binding"), settings.database_pool())
    database.migrate(MIGRATIONS)
    channel = auth_channel or open_channel(settings.auth_target)
    auth = Auth(channel, settings.auth_timeout_seconds)
    service = BindingService(
        database, personal_data, index_keys or settings.index_keyring(), clock, auth
    )
    public = BindingServicer(service)
    # Binding verifies access tokens itself (internal callers bypass the gateway), and
    # refuses those of sessions auth revoked (global revocation).
    authenticator = SessionAuthenticator(
        TokenVerifier(auth.public_keys, clock, settings.platform.jwks_cache_seconds),
        RevocationList(auth.revoked_since, poll_seconds=settings.revocation_poll_seconds),
    )
    internal = InternalBindingServicer(service)
    on_stop = [database.dispose]
    if auth_channel is None:
        on_stop.append(channel.close)
    return GrpcHost.for_service(
        settings,
        [
            Registration(
                PUBLIC_SERVICE,
                lambda server: binding_pb2_grpc.add_BindingServiceServicer_to_server(
                    public, server
                ),
            ),
            Registration(
                INTERNAL_SERVICE,
                lambda server: binding_pb2_grpc.add_InternalBindingServiceServicer_to_server(
                    internal, server
                ),
            ),
        ],
        authenticator=authenticator,
        on_stop=on_stop,
    )
