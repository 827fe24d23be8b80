"""A real SMS server on port 0 with the test's clock, store and database."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from etax.sms.v1 import sms_pb2, sms_pb2_grpc

from etax_platform.clock import ManualClock
from etax_platform.kv import KeyValueStore
from etax_platform.pii import Keyring
from etax_platform.server import GrpcHost
from etax_platform.settings import PlatformSettings
from services.sms.app import build
from services.sms.providers import Provider
from services.sms.settings import SmsSettings


def sms_settings(tmp_path: Path, keyring: Keyring, **overrides: object) -> SmsSettings:
    dumped = keyring.dump()
    platform = PlatformSettings(
        data_dir=tmp_path,
        pii_keys=dumped["keys"],
        pii_active_key_id=dumped["active_key_id"],
        pii_index_key=dumped["index_key"],
    )
    values: dict[str, object] = {"port": 0, "outbox_enabled": True, "platform": platform}
    values.update(overrides)
    return SmsSettings(**values)  # type: ignore[arg-type]


@dataclass
class SmsClient:
    host: GrpcHost
    public: sms_pb2_grpc.SmsServiceStub
    internal: sms_pb2_grpc.InternalSmsServiceStub
    outbox: sms_pb2_grpc.SmsOutboxServiceStub

    def latest(self, recipient: str) -> sms_pb2.OutboxMessage:
        messages = self.outbox.ListMessages(
            sms_pb2.ListMessagesRequest(recipient=recipient), timeout=5
        ).messages
        assert messages, f"nothing was sent to {recipient}"
        return messages[0]


@pytest.fixture
def start_sms(
    tmp_path: Path, keyring: Keyring, clock: ManualClock, kv_store: KeyValueStore
) -> Iterator[object]:
    hosts: list[GrpcHost] = []
    channels: list[grpc.Channel] = []

    def start(
        provider: Provider | None = None, store: KeyValueStore | None = None, **overrides: object
    ) -> SmsClient:
        settings = sms_settings(tmp_path, keyring, **overrides)
        host = build(settings, clock=clock, store=store or kv_store, provider=provider).start()
        hosts.append(host)
        channel = grpc.insecure_channel(host.address)
        channels.append(channel)
        return SmsClient(
            host,
            sms_pb2_grpc.SmsServiceStub(channel),
            sms_pb2_grpc.InternalSmsServiceStub(channel),
            sms_pb2_grpc.SmsOutboxServiceStub(channel),
        )

    yield start
    for channel in channels:
        channel.close()
    for host in hosts:
        host.stop(grace=0)


@pytest.fixture
def sms(start_sms: object) -> SmsClient:
    return start_sms()  # type: ignore[operator,no-any-return]
