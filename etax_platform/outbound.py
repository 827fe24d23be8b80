"""Calls to external providers (the SMS gateway, the real-name authority): one adapter.

`Outbound.post(path, body, parse)` sends `body` as a signed JSON POST and returns
`parse(response)` of a 2xx answer, or raises `OutboundFailure` (never personal data in it).
Each provider declares how it is called in a `ProviderPolicy`:

- one overall deadline per call: every attempt's timeout (connect, write, each read) is what
  is left of it, and no wait starts that would end past it;
- which outcomes are retried (`retry_statuses`, `retry_transport_errors`: refused or reset
  connections and timeouts) and how many attempts a call may make;
- exponential backoff with jitter, the n-th wait drawn from
  `[cap * jitter_floor, cap]` with `cap = min(backoff_max, backoff * 2**(n-1))`, and at
  least the provider's `Retry-After` (seconds);
- a reply `parse` refuses (ValueError) is outside the contract: a failure, not retried.

An optional `CircuitBreaker` counts every call that ends in a failure; while it is open
calls fail at once. Every attempt is reported to one callback (`report`, an `Attempt`):
that is where metrics attach (issue 15: latency, retries, outcomes); the breaker's state is
`Outbound.breaker.state`, for a gauge.

Signature: every request carries `X-Etax-Timestamp` (unix seconds), `X-Etax-Nonce` and
`X-Etax-Signature`, hex HMAC-SHA256 with the shared key over
"POST\\n<path>\\n<timestamp>\\n<nonce>\\n<hex SHA-256 of the body>" (`path` as sent, without
the query), so the provider can refuse forged and replayed requests. Each attempt is
signed anew.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import httpx

from etax_platform import metrics, tracing
from etax_platform.observability import request_id

log = logging.getLogger("etax.outbound")

T = TypeVar("T")


# --- signature -----------------------------------------------------------------------------


def request_signature(key: bytes, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    text = f"POST\n{path}\n{timestamp}\n{nonce}\n{hashlib.sha256(body).hexdigest()}"
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def signed_headers(key: bytes, path: str, body: bytes, unix_time: float) -> dict[str, str]:
    timestamp = str(int(unix_time))
    nonce = secrets.token_hex(16)
    return {
        "content-type": "application/json",
        "x-etax-timestamp": timestamp,
        "x-etax-nonce": nonce,
        "x-etax-signature": request_signature(key, path, timestamp, nonce, body),
        "x-request-id": request_id.get(),
    }


# --- policy and outcomes -------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderPolicy:
    """How one provider is called (see the module docstring)."""

    deadline: float = 5.0  # seconds for the whole call, retries and waits included
    attempts: int = 3
    retry_statuses: Collection[int] = frozenset()
    retry_transport_errors: bool = False
    backoff: float = 0.2
    backoff_max: float = 2.0
    jitter_floor: float = 0.0  # 0: full jitter

    def __post_init__(self) -> None:
        if self.deadline <= 0 or self.attempts < 1:
            raise ValueError("a provider call needs a positive deadline and one attempt")
        if self.backoff < 0 or self.backoff_max < 0 or not 0 <= self.jitter_floor <= 1:
            raise ValueError("backoff must not be negative; jitter_floor is within [0, 1]")


class OutboundFailure(Exception):
    """No usable answer: why (no personal data), the last status, the provider's hint."""

    def __init__(
        self, why: str, *, status: int | None = None, retry_after: timedelta | None = None
    ) -> None:
        super().__init__(why)
        self.why = why
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class Attempt:
    """One attempt, as reported to `Outbound`'s `report` callback.

    `outcome`: "ok", "status" (a non-2xx answer), "timeout", "unreachable", "malformed"
    (a 2xx reply `parse` refused), or "circuit_open" (refused by the breaker, `number` 0,
    nothing sent).
    """

    provider: str
    path: str
    number: int
    outcome: str
    status: int | None
    seconds: float
    retrying: bool


def log_attempt(attempt: Attempt) -> None:
    """A warning per failed attempt."""
    if attempt.outcome == "ok":
        return
    status = "" if attempt.status is None else f" {attempt.status}"
    log.warning(
        "%s %s attempt %d: %s%s after %.3fs%s",
        attempt.provider,
        attempt.path,
        attempt.number,
        attempt.outcome,
        status,
        attempt.seconds,
        ", retrying" if attempt.retrying else "",
    )


def report_attempt(attempt: Attempt) -> None:
    """The default report: provider metrics (etax_provider_*), then `log_attempt`."""
    provider, path = attempt.provider, attempt.path
    metrics.PROVIDER_ATTEMPTS.labels(provider, path, attempt.outcome).inc()
    if attempt.number:  # a call the breaker refused sent nothing
        metrics.PROVIDER_SECONDS.labels(provider, path).observe(attempt.seconds)
    if attempt.retrying:
        metrics.PROVIDER_RETRIES.labels(provider, path).inc()
    log_attempt(attempt)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None  # absent, or an HTTP date (not used by these providers)
    return seconds if 0 <= seconds <= 3600 else None


# --- circuit breaker -----------------------------------------------------------------------


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Fail fast while a provider is down, probe it again later.

    closed: calls go through; `failure_threshold` consecutive failures open it.
    open: calls fail at once (OutboundFailure "circuit open") until `cooldown` has passed.
    half-open: one call goes through as a probe (others still fail fast); its success
    closes the breaker, its failure opens it for another cool-down.

    Time comes from `timer` (monotonic seconds), so tests move it instead of sleeping.
    """

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
        """Lets the call through, or raises OutboundFailure while open (or a probe runs)."""
        with self._lock:
            if self._opened_at is None:
                return
            remaining = self._cooldown - (self._timer() - self._opened_at)
            if remaining > 0 or self._probing:
                retry_after = timedelta(seconds=max(remaining, 1.0))
                raise OutboundFailure("circuit open", retry_after=retry_after)
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


# The breaker's state as a gauge value (etax_provider_breaker_state).
_BREAKER_VALUES = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}


# --- the adapter ---------------------------------------------------------------------------


@dataclass
class _Failed:
    """One attempt's failure, before the policy decides whether it is retried."""

    failure: OutboundFailure
    outcome: str
    retryable: bool
    retry_after: float = 0.0


class Outbound:
    """Signed JSON POSTs to one provider, as its `ProviderPolicy` says."""

    def __init__(
        self,
        name: str,
        base_url: str,
        key: bytes,
        policy: ProviderPolicy,
        *,
        breaker: CircuitBreaker | None = None,
        report: Callable[[Attempt], None] = report_attempt,
        sleep: Callable[[float], object] | None = None,
        jitter: Callable[[float, float], float] = random.uniform,
        wall_clock: Callable[[], float] = time.time,
        max_connections: int = 64,
    ) -> None:
        self.name = name
        self.policy = policy
        self.breaker = breaker
        if breaker is not None:
            metrics.watch_value(
                metrics.BREAKER_STATE, (name,), breaker, lambda b: _BREAKER_VALUES[b.state]
            )
        self._key = key
        self._report = report
        self._closed = threading.Event()
        # Backoff waits end early when the adapter is closed (server shutdown).
        self._sleep = sleep or self._closed.wait
        self._jitter = jitter
        self._wall_clock = wall_clock
        # trust_env=False: no proxy from the environment between us and the provider.
        self._client = httpx.Client(
            base_url=base_url,
            trust_env=False,
            timeout=policy.deadline,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=16),
        )

    def close(self) -> None:
        self._closed.set()
        self._client.close()

    def post(self, path: str, body: Mapping[str, Any], parse: Callable[[httpx.Response], T]) -> T:
        """`parse(response)` of the first 2xx answer; OutboundFailure if there is none."""
        payload = json.dumps(body, ensure_ascii=False).encode()
        shown = path.partition("?")[0]  # reports and logs never carry a query (credentials)
        if self.breaker is None:
            return self._attempts(path, shown, payload, parse)
        try:
            self.breaker.before_call()
        except OutboundFailure:
            self._report(Attempt(self.name, shown, 0, "circuit_open", None, 0.0, False))
            raise
        try:
            result = self._attempts(path, shown, payload, parse)
        except BaseException:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        return result

    def _wait_before(self, number: int, retry_after: float) -> float:
        """The wait before attempt `number + 1`."""
        policy = self.policy
        cap = min(policy.backoff_max, policy.backoff * 2 ** (number - 1))
        return max(self._jitter(cap * policy.jitter_floor, cap), retry_after)

    def _attempts(
        self, path: str, shown: str, payload: bytes, parse: Callable[[httpx.Response], T]
    ) -> T:
        policy = self.policy
        deadline = time.monotonic() + policy.deadline
        for number in range(1, policy.attempts + 1):
            started = time.monotonic()
            if started >= deadline:
                raise OutboundFailure("deadline exceeded")
            answer = self._send(path, payload, deadline - started)
            if isinstance(answer, httpx.Response):
                status = answer.status_code
                try:
                    result = parse(answer)
                except ValueError:
                    seconds = time.monotonic() - started
                    self._report(
                        Attempt(self.name, shown, number, "malformed", status, seconds, False)
                    )
                    raise OutboundFailure("malformed reply", status=status) from None
                seconds = time.monotonic() - started
                self._report(Attempt(self.name, shown, number, "ok", status, seconds, False))
                return result
            retrying, delay = False, 0.0
            if answer.retryable and number < policy.attempts:
                delay = self._wait_before(number, answer.retry_after)
                retrying = time.monotonic() + delay < deadline
            seconds = time.monotonic() - started
            self._report(
                Attempt(
                    self.name,
                    shown,
                    number,
                    answer.outcome,
                    answer.failure.status,
                    seconds,
                    retrying,
                )
            )
            if not retrying:
                raise answer.failure
            self._sleep(delay)
            if self._closed.is_set():
                raise OutboundFailure("closed")
        raise AssertionError("the loop returns or raises")  # pragma: no cover

    def _send(self, path: str, payload: bytes, timeout: float) -> httpx.Response | _Failed:
        """One signed attempt: its 2xx response, or what went wrong."""
        request = self._client.build_request("POST", path, content=payload, timeout=timeout)
        request.headers.update(
            signed_headers(self._key, request.url.path, payload, self._wall_clock())
        )
        retry_transport = self.policy.retry_transport_errors
        try:
            if tracing.ENABLED:
                with tracing.span(
                    f"POST {request.url.path}",
                    attributes={"http.request.method": "POST", "etax.provider": self.name},
                ) as span:
                    tracing.inject(request.headers)
                    response = self._client.send(request)
                    span.set_attribute("http.response.status_code", response.status_code)
            else:
                response = self._client.send(request)
        except httpx.TimeoutException:
            return _Failed(OutboundFailure("timeout"), "timeout", retry_transport)
        except httpx.TransportError as error:
            why = f"unreachable ({type(error).__name__})"
            return _Failed(OutboundFailure(why), "unreachable", retry_transport)
        status = response.status_code
        if 200 <= status < 300:
            return response
        hint = _retry_after(response)
        failure = OutboundFailure(
            f"status {status}",
            status=status,
            retry_after=None if hint is None else timedelta(seconds=hint),
        )
        return _Failed(failure, "status", status in self.policy.retry_statuses, hint or 0.0)
