"""A circuit breaker: fail fast while a provider is down, probe it again later.

closed: calls go through; `failure_threshold` consecutive failures open it.
open: calls fail at once (ProviderBusy) until `cooldown` has passed.
half-open: one call goes through as a probe (others still fail fast); its success closes
the breaker, its failure opens it for another cool-down.

Time comes from `timer` (monotonic seconds), so tests move it instead of sleeping.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from services.face.providers import ProviderBusy


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown: float = 30.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._cooldown = cooldown
        self._timer = timer
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            if self._opened_at is None:
                return BreakerState.CLOSED
            if self._probing or self._timer() - self._opened_at >= self._cooldown:
                return BreakerState.HALF_OPEN
            return BreakerState.OPEN

    def before_call(self) -> None:
        """Lets the call through, or raises ProviderBusy while open (or a probe runs)."""
        with self._lock:
            if self._opened_at is None:
                return
            remaining = self._cooldown - (self._timer() - self._opened_at)
            if remaining > 0 or self._probing:
                retry_after = timedelta(seconds=max(remaining, 1.0))
                raise ProviderBusy("circuit open", retry_after=retry_after)
            self._probing = True

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self._threshold:
                self._opened_at = self._timer()
            self._probing = False
