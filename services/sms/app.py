"""Wiring of the SMS service: settings in, a ready GrpcHost out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from etax.sms.v1 import sms_pb2_grpc

from etax_platform.batches import BatchWriter
from etax_platform.clock import Clock, SystemClock
from etax_platform.db import Database
from etax_platform.kv import KeyValueStore
from etax_platform.pii import PersonalData
from etax_platform.server import GrpcHost, Registration
from services.sms.models import deliveries as delivery_log
from services.sms.providers import HttpProvider, Outbox, Provider
from services.sms.service import CodeService, Policy
from services.sms.servicer import InternalSmsServicer, OutboxServicer, SmsServicer
from services.sms.settings import SmsSettings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SMS_SERVICE = "etax.sms.v1.SmsService"
INTERNAL_SMS_SERVICE = "etax.sms.v1.InternalSmsService"
OUTBOX_SERVICE = "etax.sms.v1.SmsOutboxService"


def build(
    settings: SmsSettings,
    *,
    clock: Clock | None = None,
    store: KeyValueStore | None = None,
    provider: Provider | None = None,
) -> GrpcHost:
    """The SMS service's server, not yet started. Tests pass their own clock and store."""
    on_stop: list[Callable[[], None]] = []
    if store is None:  # what the host opens itself it closes on stop
        store = settings.platform.open_store()
        on_stop.append(store.close)
    database = Database(settings.database_url_for("sms"), settings.database_pool())
    database.migrate(MIGRATIONS)
    # Never dropped: journaled locally while the database is away (etax_platform.db).
    deliveries = BatchWriter(
        database,
        delivery_log,
        name="sms-deliveries",
        service="sms",
        journal_dir=settings.platform.journal_path(),
        key="delivery_id",
        batch_seconds=settings.delivery_log_batch_seconds,
    )
    # Stopped in this order: the log's last rows are written before the engine goes.
    on_stop += [deliveries.close, database.dispose]
    outbox = Outbox(store)
    if provider is None:
        if settings.provider == "http":
            assert settings.http_secret is not None  # checked by SmsSettings
            http = HttpProvider(
                settings.http_url,
                settings.http_secret.get_secret_value().encode(),
                timeout=settings.http_timeout_seconds,
                attempts=settings.http_attempts,
            )
            on_stop.append(http.close)
            provider = http
        else:
            provider = outbox
    codes = CodeService(
        store=store,
        provider=provider,
        personal_data=PersonalData(settings.platform.keyring()),
        clock=clock or SystemClock(),
        deliveries=deliveries,
        policy=Policy(
            throttle_limit=settings.throttle_limit,
            throttle_window=timedelta(seconds=settings.throttle_window_seconds),
            code_ttl=timedelta(seconds=settings.code_ttl_seconds),
            max_attempts=settings.max_verify_attempts,
        ),
    )
    registrations = [
        Registration(
            SMS_SERVICE,
            lambda server: sms_pb2_grpc.add_SmsServiceServicer_to_server(
                SmsServicer(codes), server
            ),
        ),
        Registration(
            INTERNAL_SMS_SERVICE,
            lambda server: sms_pb2_grpc.add_InternalSmsServiceServicer_to_server(
                InternalSmsServicer(codes), server
            ),
        ),
    ]
    if settings.outbox_enabled:
        registrations.append(
            Registration(
                OUTBOX_SERVICE,
                lambda server: sms_pb2_grpc.add_SmsOutboxServiceServicer_to_server(
                    OutboxServicer(codes, outbox), server
                ),
            )
        )
    return GrpcHost.for_service(settings, registrations, on_stop=on_stop)
