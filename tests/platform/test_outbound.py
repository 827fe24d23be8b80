"""The outbound provider adapter against a real HTTP provider on loopback: signed requests,
one deadline, retries as a policy says, backoff with jitter, Retry-After, the circuit
breaker, and the report of every attempt (G1, G2). How SMS and face use it with their own
policies is tested with each service (tests/sms/test_providers.py,
tests/face/test_http_provider.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from etax_platform.outbound import (
    Attempt,
    BreakerState,
    CircuitBreaker,
    Outbound,
    OutboundFailure,
    ProviderPolicy,
    request_signature,
)
from tests.harness.provider_server import FakeProvider, fake_provider
from tests.harness.servers import free_port

KEY = b"outbound-test-key-0123456789abcdef"
BUSY = ProviderPolicy(attempts=3, retry_statuses={429, 503}, backoff=0.1, backoff_max=0.3)


@dataclass
class Timer:
    """Monotonic seconds that only move when told to."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Recorder:
    """What the adapter reported and how long it was told to wait."""

    attempts: list[Attempt]
    sleeps: list[float]

    @property
    def outcomes(self) -> list[tuple[str, int | None, bool]]:
        return [(a.outcome, a.status, a.retrying) for a in self.attempts]


@pytest.fixture
def server() -> Iterator[FakeProvider]:
    with fake_provider(KEY) as fake:
        yield fake


@pytest.fixture
def recorder() -> Recorder:
    return Recorder([], [])


@pytest.fixture
def opened() -> Iterator[list[Outbound]]:
    adapters: list[Outbound] = []
    yield adapters
    for adapter in adapters:
        adapter.close()


@pytest.fixture
def outbound(opened: list[Outbound], recorder: Recorder) -> Iterator[Any]:
    def make(url: str, policy: ProviderPolicy = BUSY, **options: Any) -> Outbound:
        options.setdefault("sleep", recorder.sleeps.append)
        options.setdefault("jitter", lambda _low, high: high)  # the largest delay allowed
        adapter = Outbound("test", url, KEY, policy, report=recorder.attempts.append, **options)
        opened.append(adapter)
        return adapter

    yield make


def _json(response: httpx.Response) -> Any:
    return response.json()


# --- the request ---------------------------------------------------------------------------


def test_g2_a_request_is_signed_json_and_carries_the_request_id(
    server: FakeProvider, outbound: Any
) -> None:
    server.expect("ok", reply={"result": "pass"})
    adapter = outbound(server.url)
    assert adapter.post("/v1/check", {"name": "张小三"}, _json) == {"result": "pass"}
    (seen,) = server.seen
    assert seen.signature_ok and seen.path == "/v1/check"
    assert seen.body == {"name": "张小三"}
    assert {"x-etax-timestamp", "x-etax-nonce", "x-request-id"} <= set(seen.headers)


def test_g2_the_signature_covers_the_path_as_sent_and_every_attempt_is_signed_anew(
    server: FakeProvider, outbound: Any
) -> None:
    server.expect("busy", "ok")
    adapter = outbound(f"{server.url}/gateway")  # a base URL with a path of its own
    adapter.post("/send", {"n": 1}, _json)
    assert [s.path for s in server.seen] == ["/gateway/send", "/gateway/send"]
    assert all(s.signature_ok for s in server.seen)
    nonces = {s.headers["x-etax-nonce"] for s in server.seen}
    assert len(nonces) == 2
    first = server.seen[0]
    assert first.headers["x-etax-signature"] == request_signature(
        KEY,
        "/gateway/send",
        first.headers["x-etax-timestamp"],
        first.headers["x-etax-nonce"],
        b'{"n": 1}',
    )


def test_a_query_is_sent_but_never_reported(
    server: FakeProvider, outbound: Any, recorder: Recorder
) -> None:
    outbound(server.url).post("/send?account=bureau&token=s3cret", {}, _json)
    (seen,) = server.seen
    assert seen.path == "/send?account=bureau&token=s3cret" and seen.signature_ok
    assert [a.path for a in recorder.attempts] == ["/send"]


def test_g2_a_reply_the_parser_refuses_is_a_failure_and_not_retried(
    server: FakeProvider, outbound: Any, recorder: Recorder
) -> None:
    server.expect("malformed")
    with pytest.raises(OutboundFailure, match="malformed reply"):
        outbound(server.url).post("/x", {}, _json)
    assert server.requests == 1
    assert recorder.outcomes == [("malformed", 200, False)]


# --- the retry rule ------------------------------------------------------------------------


def test_g2_statuses_the_policy_names_are_retried_with_exponential_backoff(
    server: FakeProvider, outbound: Any, recorder: Recorder
) -> None:
    server.expect("busy", "throttled", "ok")
    assert outbound(server.url).post("/x", {}, _json) == {"result": "pass"}
    assert server.requests == 3
    assert recorder.sleeps == pytest.approx([0.1, 0.2])
    assert recorder.outcomes == [("status", 503, True), ("status", 429, True), ("ok", 200, False)]
    assert [a.number for a in recorder.attempts] == [1, 2, 3]


def test_g2_other_statuses_fail_at_once(
    server: FakeProvider, outbound: Any, recorder: Recorder
) -> None:
    for behaviour, status in (("error", 500), ("refused", 400)):
        server.expect(behaviour)
        with pytest.raises(OutboundFailure) as caught:
            outbound(server.url).post("/x", {}, _json)
        assert caught.value.status == status
    assert server.requests == 2 and recorder.sleeps == []


def test_g2_the_last_attempt_is_not_followed_by_a_wait(
    server: FakeProvider, outbound: Any, recorder: Recorder
) -> None:
    server.expect("busy")
    with pytest.raises(OutboundFailure) as caught:
        outbound(server.url).post("/x", {}, _json)
    assert caught.value.status == 503
    assert server.requests == 3 and len(recorder.sleeps) == 2
    assert [a.retrying for a in recorder.attempts] == [True, True, False]


def test_g1_transport_errors_are_retried_only_when_the_policy_says_so(
    outbound: Any, recorder: Recorder
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    for retried, attempts in ((False, 1), (True, 3)):
        recorder.attempts.clear()
        policy = ProviderPolicy(attempts=3, retry_transport_errors=retried, backoff=0.01)
        with pytest.raises(OutboundFailure, match="unreachable"):
            outbound(down, policy).post("/x", {}, _json)
        assert [a.outcome for a in recorder.attempts] == ["unreachable"] * attempts


def test_g2_jitter_draws_between_the_floor_and_the_exponential_cap(
    server: FakeProvider, outbound: Any, recorder: Recorder
) -> None:
    bounds: list[tuple[float, float]] = []

    def jitter(low: float, high: float) -> float:
        bounds.append((low, high))
        return low

    policy = ProviderPolicy(attempts=5, retry_statuses={503}, backoff=0.1, backoff_max=0.3)
    server.expect("busy", "busy", "busy", "busy", "ok")
    outbound(server.url, policy, jitter=jitter).post("/x", {}, _json)
    assert [low for low, _ in bounds] == [0, 0, 0, 0]
    assert [high for _, high in bounds] == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert recorder.sleeps == [0, 0, 0, 0]

    bounds.clear()
    floored = ProviderPolicy(attempts=2, retry_statuses={503}, backoff=0.1, jitter_floor=0.5)
    server.expect("busy", "ok")
    outbound(server.url, floored, jitter=jitter).post("/x", {}, _json)
    ((low, high),) = bounds
    assert (low, high) == (pytest.approx(0.05), pytest.approx(0.1))


def test_g2_retry_after_is_honoured(
    server: FakeProvider, outbound: Any, recorder: Recorder
) -> None:
    server.retry_after = "2"
    server.expect("throttled", "ok")
    outbound(server.url).post("/x", {}, _json)
    assert recorder.sleeps == [2.0]


def test_g2_a_wait_that_would_end_past_the_deadline_is_not_started(
    server: FakeProvider, outbound: Any, recorder: Recorder
) -> None:
    server.retry_after = "60"
    server.expect("busy")
    with pytest.raises(OutboundFailure) as caught:
        outbound(server.url).post("/x", {}, _json)
    assert server.requests == 1 and recorder.sleeps == []
    assert caught.value.retry_after is not None
    assert caught.value.retry_after.total_seconds() == 60  # the provider's hint, passed on
    assert recorder.outcomes == [("status", 503, False)]


def test_g2_one_deadline_bounds_every_attempt(server: FakeProvider, outbound: Any) -> None:
    policy = ProviderPolicy(deadline=0.3, attempts=3, retry_transport_errors=True)
    server.expect("slow")
    started = time.monotonic()
    with pytest.raises(OutboundFailure, match="timeout"):
        outbound(server.url, policy).post("/x", {}, _json)
    # The first attempt used the whole deadline: no time was left for another.
    assert server.requests == 1
    assert time.monotonic() - started < 5


def test_g2_closing_ends_a_backoff_wait_at_once(server: FakeProvider, outbound: Any) -> None:
    waiting = threading.Event()

    def report(attempt: Attempt) -> None:
        if attempt.retrying:
            waiting.set()

    server.retry_after = "30"
    server.expect("busy")
    policy = ProviderPolicy(deadline=60, attempts=2, retry_statuses={503})
    adapter = Outbound("test", server.url, KEY, policy, report=report)  # real waits
    failures: list[OutboundFailure] = []

    def call() -> None:
        try:
            adapter.post("/x", {}, _json)
        except OutboundFailure as failure:
            failures.append(failure)

    caller = threading.Thread(target=call)
    caller.start()
    assert waiting.wait(10)
    adapter.close()
    caller.join(5)
    assert not caller.is_alive()
    assert [f.why for f in failures] == ["closed"]


def test_a_policy_needs_a_deadline_and_an_attempt() -> None:
    for bad in ({"attempts": 0}, {"deadline": 0}, {"jitter_floor": 2}, {"backoff": -1}):
        with pytest.raises(ValueError):
            ProviderPolicy(**bad)  # type: ignore[arg-type]


# --- the circuit breaker -------------------------------------------------------------------


def test_g2_breaker_opens_fails_fast_and_probes_after_the_cool_down(
    server: FakeProvider, outbound: Any, recorder: Recorder
) -> None:
    timer = Timer()
    breaker = CircuitBreaker(failure_threshold=2, cooldown=30, timer=timer)
    adapter = outbound(server.url, breaker=breaker)
    server.expect("error")
    for _ in range(2):
        with pytest.raises(OutboundFailure):
            adapter.post("/x", {}, _json)
    assert breaker.state is BreakerState.OPEN

    # Open: fails at once, without a request, says when to come back, and is reported.
    with pytest.raises(OutboundFailure, match="circuit open") as caught:
        adapter.post("/x", {}, _json)
    assert server.requests == 2
    assert caught.value.retry_after is not None
    assert caught.value.retry_after.total_seconds() == pytest.approx(30)
    assert recorder.attempts[-1].outcome == "circuit_open"
    assert recorder.attempts[-1].number == 0

    timer.now += 30
    assert breaker.state is BreakerState.HALF_OPEN
    server.expect("ok")
    adapter.post("/x", {}, _json)
    assert breaker.state is BreakerState.CLOSED


def test_g2_a_call_that_fails_after_its_retries_is_one_failure_for_the_breaker(
    server: FakeProvider, outbound: Any
) -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown=30, timer=Timer())
    adapter = outbound(server.url, breaker=breaker)
    server.expect("busy")  # three attempts, one failed call
    with pytest.raises(OutboundFailure):
        adapter.post("/x", {}, _json)
    assert server.requests == 3
    assert breaker.state is BreakerState.CLOSED


def test_g2_half_open_breaker_lets_one_probe_through_at_a_time() -> None:
    timer = Timer()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=10, timer=timer)
    breaker.before_call()
    breaker.record_failure()
    with pytest.raises(OutboundFailure):
        breaker.before_call()
    timer.now += 10
    breaker.before_call()  # the probe
    with pytest.raises(OutboundFailure):
        breaker.before_call()  # others still fail fast while it runs
    breaker.record_failure()  # the probe failed: open for another cool-down
    assert breaker.state is BreakerState.OPEN
    timer.now += 10
    breaker.before_call()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    breaker.before_call()


def test_g2_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=10, timer=Timer())
    for outcome in ("fail", "fail", "ok", "fail", "fail"):
        breaker.before_call()
        if outcome == "ok":
            breaker.record_success()
        else:
            breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
