"""Real-name verification providers behind one small interface (G2).

`simulator` decides by the capture's content, for development and tests; `http` talks
JSON over HTTP to the authority's real-name service through the platform's outbound adapter
(`etax_platform.outbound`: signature, deadline, retries on "busy", circuit breaker).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

from services.face.domain import CaptureVerdict, Identity


class ProviderBusy(Exception):
    """The provider is busy, slow, down or talking nonsense: the user retries later.

    Never carries personal data; `retry_after` is a hint for the caller, if known.
    """

    def __init__(self, why: str, retry_after: timedelta | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.retry_after = retry_after


class FaceProvider(Protocol):
    def verify_face(self, identity: Identity, capture: bytes) -> CaptureVerdict:
        """Compares the capture with the identity's real-name record; raises ProviderBusy."""
        ...

    def check_identity(self, identity: Identity) -> bool:
        """B1: whether the authority's records show this name for this document."""
        ...

    def close(self) -> None: ...
