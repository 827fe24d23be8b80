"""Delivery of codes (G1): the development outbox and a generic HTTP provider.

A provider either delivers or raises `DeliveryFailed`; the service then gives the send
slot back and forgets the code, so a failed delivery records nothing as sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import httpx
import orjson
from etax.common.v1 import types_pb2

from etax_platform.kv import KeyValueStore
from etax_platform.outbound import Outbound, OutboundFailure, ProviderPolicy
from services.sms.scripts import OUTBOX_ADD, OUTBOX_READ


@dataclass(frozen=True)
class Message:
    message_id: str  # the verification id: lets a provider drop a retried duplicate
    channel: str  # "sms" or "email"
    recipient: str
    recipient_index: str
    purpose: types_pb2.VerificationPurpose
    code: str
    text: str
    sent_ms: int


class DeliveryFailed(Exception):
    """The provider did not accept the message."""


class Provider(Protocol):
    name: str

    def deliver(self, message: Message) -> None: ...


class Outbox:
    """Keeps the newest messages per recipient in the shared store, for development and
    tests (SmsOutboxService reads them). Never enabled in production."""

    name = "outbox"
    KEEP = 20
    TTL = timedelta(days=1)

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store

    @staticmethod
    def _key(recipient_index: str) -> str:
        return f"sms:outbox:{recipient_index}"

    def deliver(self, message: Message) -> None:
        # vars(), not asdict(): the fields are plain values, and asdict deep-copies them.
        entry = orjson.dumps(vars(message))
        ttl_ms = int(self.TTL.total_seconds() * 1000)
        self._store.run(
            OUTBOX_ADD, [self._key(message.recipient_index)], [entry, self.KEEP, ttl_ms]
        )

    def messages(self, recipient_index: str) -> list[Message]:
        found = self._store.run(OUTBOX_READ, [self._key(recipient_index)], [self.KEEP])
        return [Message(**orjson.loads(entry)) for entry in found]


class HttpProvider:
    """JSON POST to an SMS gateway through `etax_platform.outbound` (signed, one deadline).

    Its policy: connection failures, timeouts and 5xx answers are retried with backoff
    (waits between half the cap and the cap) inside the one deadline; other answers, 4xx
    included, are not. No circuit breaker: a gateway's 4xx refuses one message (say, a
    number it does not serve), which must not stop everyone's codes.
    """

    name = "http"

    def __init__(self, url: str, secret: bytes, *, timeout: float = 3.0, attempts: int = 3) -> None:
        target = httpx.URL(url)
        self._path = target.raw_path.decode("ascii")
        self._outbound = Outbound(
            "sms",
            f"{target.scheme}://{target.netloc.decode('ascii')}",
            secret,
            ProviderPolicy(
                deadline=timeout,
                attempts=attempts,
                retry_statuses=range(500, 600),
                retry_transport_errors=True,
                backoff=0.05,
                backoff_max=1.0,
                jitter_floor=0.5,
            ),
        )

    def deliver(self, message: Message) -> None:
        body = {
            "message_id": message.message_id,
            "channel": message.channel,
            "to": message.recipient,
            "text": message.text,
        }
        try:
            self._outbound.post(self._path, body, lambda _response: None)
        except OutboundFailure as failure:
            raise DeliveryFailed(f"provider: {failure.why}") from None

    def close(self) -> None:
        self._outbound.close()
