"""Wiring of the face broker: settings, clock, store, provider -> a GrpcHost."""

from __future__ import annotations

import threading

from etax.face.v1 import face_pb2, face_pb2_grpc

from etax_platform.clock import Clock, SystemClock
from etax_platform.kv import KeyValueStore
from etax_platform.outbound import CircuitBreaker
from etax_platform.pii import PersonalData
from etax_platform.server import GrpcHost, Registration
from services.face.domain import Signer
from services.face.providers import FaceProvider
from services.face.providers.http_provider import HttpProvider
from services.face.providers.simulator import SimulatedProvider
from services.face.service import FaceService
from services.face.servicer import FaceServicer, InternalFaceServicer
from services.face.settings import FaceSettings

PUBLIC_SERVICE = face_pb2.DESCRIPTOR.services_by_name["FaceService"].full_name
INTERNAL_SERVICE = face_pb2.DESCRIPTOR.services_by_name["InternalFaceService"].full_name


def provider_from(settings: FaceSettings) -> FaceProvider:
    if settings.provider == "simulator":
        return SimulatedProvider(slow_seconds=settings.simulator_slow_seconds)
    assert settings.provider_key is not None
    return HttpProvider(
        settings.provider_url,
        settings.provider_key.get_secret_value().encode(),
        deadline=settings.provider_deadline_seconds,
        attempts=settings.provider_attempts,
        backoff=settings.provider_backoff_seconds,
        backoff_max=settings.provider_backoff_max_seconds,
        breaker=CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_seconds),
    )


def build(
    settings: FaceSettings,
    *,
    clock: Clock | None = None,
    store: KeyValueStore | None = None,
    provider: FaceProvider | None = None,
    personal_data: PersonalData | None = None,
) -> GrpcHost:
    """The face service's host, not started. What it opens itself it closes on stop."""
    owned_store = store is None
    owned_provider = provider is None
    store = store if store is not None else settings.platform.open_store()
    provider = provider if provider is not None else provider_from(settings)
    service = FaceService(
        store=store,
        clock=clock or SystemClock(),
        provider=provider,
        signer=Signer(settings.signing_secret()),
        personal_data=personal_data or PersonalData(settings.platform.keyring(blind_index=False)),
        ticket_ttl=settings.ticket_ttl,
        proof_ttl=settings.proof_ttl,
        max_mismatches=settings.max_mismatches,
        capture_hold=settings.capture_hold,
        watch_poll_seconds=settings.watch_poll_seconds,
        max_watchers_per_ticket=settings.max_watchers_per_ticket,
    )
    host: GrpcHost | None = None

    def stopping() -> threading.Event:
        assert host is not None, "streams start only once the host is built"
        return host.stopping

    public = FaceServicer(service, stopping)
    internal = InternalFaceServicer(service)
    on_stop = []
    if owned_provider:
        on_stop.append(provider.close)
    if owned_store:
        on_stop.append(store.close)
    host = GrpcHost.for_service(
        settings,
        [
            Registration(
                PUBLIC_SERVICE,
                lambda server: face_pb2_grpc.add_FaceServiceServicer_to_server(public, server),
            ),
            Registration(
                INTERNAL_SERVICE,
                lambda server: face_pb2_grpc.add_InternalFaceServiceServicer_to_server(
                    internal, server
                ),
            ),
        ],
        on_stop=on_stop,
    )
    return host
