"""The generic HTTP real-name provider: JSON over HTTP, signed, bounded, fail-fast.

Requests (POST, JSON body):
- `/v1/face/verify` {document_type, document_number, name, capture (base64)}
  -> {"result": "pass" | "poor_image" | "mismatch", "hint": "too_dark" | "other_face" |
  "no_motion" (with poor_image; optional)}
- `/v1/identity/check` {document_type, document_number, name} -> {"match": true | false}

Calls go through `etax_platform.outbound` (signature, deadline, backoff, breaker) with this
provider's policy: one call has one deadline, retries included; only 503 and 429 ("busy")
are retried, with exponential backoff and full jitter (at least Retry-After, if given) while
the deadline allows; timeouts, refused connections, other statuses and replies that are not
what this contract says fail at once. Each of those, and a busy answer after the last
attempt, is a failure for the circuit breaker and ProviderBusy for the caller. Unknown extra
fields in a reply are ignored (the provider may add some); missing or ill-typed ones are
a malformed reply.
"""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from etax_platform.outbound import CircuitBreaker, Outbound, OutboundFailure, ProviderPolicy
from services.face.domain import CaptureVerdict, Identity, ImageHint, Verdict
from services.face.providers import ProviderBusy

Reply = TypeVar("Reply", bound=BaseModel)

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
        self.breaker = breaker or CircuitBreaker()
        self._outbound = Outbound(
            "face",
            base_url,
            key,
            ProviderPolicy(
                deadline=deadline,
                attempts=attempts,
                retry_statuses=_BUSY_STATUSES,
                backoff=backoff,
                backoff_max=backoff_max,
            ),
            breaker=self.breaker,
            sleep=sleep,
            jitter=jitter,
            wall_clock=wall_clock,
        )

    def verify_face(self, identity: Identity, capture: bytes) -> CaptureVerdict:
        body = {**_identity_body(identity), "capture": base64.b64encode(capture).decode()}
        reply = self._call(VERIFY_PATH, body, _VerifyReply)
        if reply.result == "pass":
            return CaptureVerdict(Verdict.PASS)
        if reply.result == "mismatch":
            return CaptureVerdict(Verdict.MISMATCH)
        return CaptureVerdict(Verdict.POOR_IMAGE, _HINTS[reply.hint])

    def check_identity(self, identity: Identity) -> bool:
        return self._call(IDENTITY_PATH, _identity_body(identity), _IdentityReply).match

    def close(self) -> None:
        self._outbound.close()

    def _call(self, path: str, body: dict[str, Any], reply: type[Reply]) -> Reply:
        try:
            # A reply outside the contract raises ValueError (pydantic's ValidationError).
            return self._outbound.post(path, body, lambda r: reply.model_validate(r.json()))
        except OutboundFailure as failure:
            raise ProviderBusy(failure.why, failure.retry_after) from None
