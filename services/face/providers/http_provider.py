"""The generic HTTP real-name provider: JSON over HTTP, signed, bounded, fail-fast.

Requests (POST, JSON body):
- `/v1/face/verify` {document_type, document_number, name, capture (base64)}
  -> {"result": "pass" | "poor_image" | "mismatch", "hint": "too_dark" | "other_face" |
  "no_motion" (with poor_image; optional)}
- `/v1/identity/check` {document_type, document_number, name} -> {"match": true | false}

Every request is signed as `etax_platform.signed_http` describes.

One call has one deadline, retries included. 503 and 429 ("busy") are retried with
exponential backoff and full jitter (at least Retry-After, if given) while the deadline
allows; timeouts, refused connections, other statuses and replies that are not what this
contract says are not retried. Each of those, and a busy answer after the last attempt,
is a failure for the circuit breaker and ProviderBusy for the caller. Unknown extra
fields in a reply are ignored (the provider may add some); missing or ill-typed ones are
a malformed reply.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from etax_platform.signed_http import signed_headers
from services.face.domain import CaptureVerdict, Identity, ImageHint, Verdict
from services.face.providers import ProviderBusy
from services.face.providers.breaker import CircuitBreaker

log = logging.getLogger("etax.face.provider")

T = TypeVar("T")

VERIFY_PATH = "/v1/face/verify"
IDENTITY_PATH = "/v1/identity/check"
_BUSY_STATUSES = frozenset({429, 503})
_HINTS = {
    "too_dark": ImageHint.TOO_DARK,
    "other_face": ImageHint.OTHER_FACE_IN_VIEW,
    "no_motion": ImageHint.NO_REQUIRED_MOTION,
    None: ImageHint.UNSPECIFIED,
}


class _VerifyReply(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    result: Literal["pass", "poor_image", "mismatch"]
    hint: Literal["too_dark", "other_face", "no_motion"] | None = None


class _IdentityReply(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    match: bool


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None


def _identity_body(identity: Identity) -> dict[str, Any]:
    return {
        "document_type": identity.document_type,
        "document_number": identity.document_number,
        "name": identity.name,
    }


class HttpProvider:
    def __init__(
        self,
        base_url: str,
        key: bytes,
        *,
        deadline: float = 5.0,
        attempts: int = 3,
        backoff: float = 0.2,
        backoff_max: float = 2.0,
        breaker: CircuitBreaker | None = None,
        sleep: Callable[[float], object] | None = None,
        jitter: Callable[[float, float], float] = random.uniform,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._deadline = deadline
        self._attempts = attempts
        self._backoff = backoff
        self._backoff_max = backoff_max
        self.breaker = breaker or CircuitBreaker()
        self._closed = threading.Event()
        # Backoff waits end early when the provider is closed (server shutdown).
        self._sleep = sleep or self._closed.wait
        self._jitter = jitter
        self._wall_clock = wall_clock
        # trust_env=False: no proxy from the environment between us and the authority.
        self._client = httpx.Client(
            base_url=base_url,
            trust_env=False,
            timeout=deadline,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    def verify_face(self, identity: Identity, capture: bytes) -> CaptureVerdict:
        body = {**_identity_body(identity), "capture": base64.b64encode(capture).decode()}
        reply = self._call(VERIFY_PATH, body, _VerifyReply.model_validate)
        if reply.result == "pass":
            return CaptureVerdict(Verdict.PASS)
        if reply.result == "mismatch":
            return CaptureVerdict(Verdict.MISMATCH)
        return CaptureVerdict(Verdict.POOR_IMAGE, _HINTS[reply.hint])

    def check_identity(self, identity: Identity) -> bool:
        reply = self._call(IDENTITY_PATH, _identity_body(identity), _IdentityReply.model_validate)
        return reply.match

    def close(self) -> None:
        self._closed.set()
        self._client.close()

    def _call(self, path: str, body: dict[str, Any], parse: Callable[[Any], T]) -> T:
        self.breaker.before_call()
        try:
            reply = self._post(path, json.dumps(body, ensure_ascii=False).encode())
            try:
                result = parse(reply)
            except ValidationError:
                raise ProviderBusy("malformed reply") from None
        except ProviderBusy as busy:
            log.warning("provider %s failed: %s", path, busy.why)
            self.breaker.record_failure()
            raise
        except BaseException:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        return result

    def _signed_headers(self, path: str, payload: bytes) -> dict[str, str]:
        return signed_headers(self._key, path, payload, self._wall_clock())

    def _post(self, path: str, payload: bytes) -> Any:
        deadline = time.monotonic() + self._deadline
        for attempt in range(self._attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProviderBusy("deadline exceeded")
            # httpx bounds each phase (connect, write, each read) by the remaining time.
            try:
                response = self._client.post(
                    path,
                    content=payload,
                    headers=self._signed_headers(path, payload),
                    timeout=remaining,
                )
            except httpx.TimeoutException:
                raise ProviderBusy("timeout") from None
            except httpx.TransportError as error:
                raise ProviderBusy(f"unreachable ({type(error).__name__})") from None
            if response.status_code in _BUSY_STATUSES:
                retry_after = _retry_after(response)
                hint = None if retry_after is None else timedelta(seconds=retry_after)
                cap = min(self._backoff_max, self._backoff * 2**attempt)
                delay = max(self._jitter(0, cap), retry_after or 0.0)
                if attempt + 1 >= self._attempts or time.monotonic() + delay >= deadline:
                    raise ProviderBusy(f"busy ({response.status_code})", hint)
                self._sleep(delay)
                if self._closed.is_set():
                    raise ProviderBusy("closed")
                continue
            if response.status_code != 200:
                raise ProviderBusy(f"status {response.status_code}")
            try:
                return response.json()
            except ValueError:
                raise ProviderBusy("malformed reply") from None
        raise ProviderBusy("no attempt left")  # unreachable with attempts >= 1
