"""Delivery of codes (G1): the development outbox and a generic HTTP provider.

A provider either delivers or raises `DeliveryFailed`; the service then gives the send
slot back and forgets the code, so a failed delivery records nothing as sent.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Protocol

import httpx
from etax.common.v1 import types_pb2

from etax_platform.kv import KeyValueStore
from etax_platform.signed_http import signed_headers

log = logging.getLogger("etax.sms.providers")


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
        entry = asdict(message)

        def prepend(current: bytes | None) -> tuple[bytes | None, None]:
            kept = json.loads(current) if current else []
            return json.dumps([entry, *kept][: self.KEEP]).encode(), None

        self._store.update(self._key(message.recipient_index), prepend, self.TTL)

    def messages(self, recipient_index: str) -> list[Message]:
        current = self._store.get(self._key(recipient_index))
        if current is None:
            return []
        return [Message(**entry) for entry in json.loads(current.value)]


class HttpProvider:
    """JSON POST to a provider, signed as `etax_platform.signed_http` describes.

    5xx answers and connection failures are retried with backoff inside one overall
    deadline; 4xx answers are not retried.
    """

    name = "http"

    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        timeout: float = 3.0,
        attempts: int = 3,
        client: httpx.Client | None = None,
    ) -> None:
        self._url = url
        self._path = httpx.URL(url).path
        self._secret = secret
        self._timeout = timeout
        self._attempts = attempts
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 1.0)),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    def deliver(self, message: Message) -> None:
        body = json.dumps(
            {
                "message_id": message.message_id,
                "channel": message.channel,
                "to": message.recipient,
                "text": message.text,
            },
            ensure_ascii=False,
        ).encode()
        deadline = time.monotonic() + self._timeout
        for attempt in range(1, self._attempts + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                response = self._client.post(
                    self._url,
                    content=body,
                    headers=signed_headers(self._secret, self._path, body, time.time()),
                    timeout=remaining,
                )
            except httpx.HTTPError as error:
                log.warning("provider attempt %d failed: %s", attempt, type(error).__name__)
            else:
                if response.status_code < 300:
                    return
                if response.status_code < 500:
                    raise DeliveryFailed(f"provider refused the message: {response.status_code}")
                log.warning("provider attempt %d answered %d", attempt, response.status_code)
            if attempt < self._attempts:
                backoff = min(0.05 * 2 ** (attempt - 1), 1.0) * random.uniform(0.5, 1.0)  # noqa: S311
                time.sleep(max(0.0, min(backoff, deadline - time.monotonic())))
        raise DeliveryFailed("provider unavailable")
