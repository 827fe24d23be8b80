"""A provider for development and tests whose answer is decided by what it is sent.

Face captures, by their first bytes:

| capture starts with | verdict |
|---|---|
| `pass` | pass |
| `dark` | poor image, hint TOO_DARK |
| `other-face` | poor image, hint OTHER_FACE_IN_VIEW |
| `no-motion` | poor image, hint NO_REQUIRED_MOTION |
| `mismatch` | mismatch |
| `busy` | ProviderBusy (FACE_SERVICE_BUSY) |
| `slow` | waits `slow_seconds`, then pass |
| anything else | mismatch (fail closed: a real photo never passes the simulator) |

Identity checks match, unless the name starts with `不符` or `mismatch` (no match) or
with `busy` (ProviderBusy).
"""

from __future__ import annotations

import threading

from services.face.domain import CaptureVerdict, Identity, ImageHint, Verdict
from services.face.providers import ProviderBusy

_BY_PREFIX: tuple[tuple[bytes, CaptureVerdict], ...] = (
    (b"pass", CaptureVerdict(Verdict.PASS)),
    (b"dark", CaptureVerdict(Verdict.POOR_IMAGE, ImageHint.TOO_DARK)),
    (b"other-face", CaptureVerdict(Verdict.POOR_IMAGE, ImageHint.OTHER_FACE_IN_VIEW)),
    (b"no-motion", CaptureVerdict(Verdict.POOR_IMAGE, ImageHint.NO_REQUIRED_MOTION)),
    (b"mismatch", CaptureVerdict(Verdict.MISMATCH)),
)


class SimulatedProvider:
    def __init__(self, slow_seconds: float = 3.0) -> None:
        self._slow_seconds = slow_seconds
        self._closed = threading.Event()

    def verify_face(self, identity: Identity, capture: bytes) -> CaptureVerdict:
        if capture.startswith(b"busy"):
            raise ProviderBusy("simulated busy")
        if capture.startswith(b"slow"):
            # Wakes early when closed, so a stopping server is not held up.
            self._closed.wait(self._slow_seconds)
            return CaptureVerdict(Verdict.PASS)
        for prefix, verdict in _BY_PREFIX:
            if capture.startswith(prefix):
                return verdict
        return CaptureVerdict(Verdict.MISMATCH)

    def check_identity(self, identity: Identity) -> bool:
        if identity.name.startswith("busy"):
            raise ProviderBusy("simulated busy")
        return not identity.name.startswith(("不符", "mismatch"))

    def close(self) -> None:
        self._closed.set()
