"""The HTTP provider against a real HTTP server on loopback: signed requests, verdicts, and
faults (slow, busy, wrong, down) under face's policy: only busy answers are retried, every
fault feeds the breaker (G2, B7). The adapter's own rules (backoff, jitter, Retry-After,
deadline, breaker states) are tested in tests/platform/test_outbound.py."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from pydantic import SecretStr

from etax_platform.errors import Reason
from etax_platform.outbound import BreakerState, CircuitBreaker
from services.face.domain import CaptureVerdict, Identity, ImageHint, Verdict
from services.face.providers import ProviderBusy
from services.face.providers.http_provider import IDENTITY_PATH, VERIFY_PATH, HttpProvider
from tests.face.conftest import FaceFactory, domain_error
from tests.harness.provider_server import FakeProvider, fake_provider
from tests.harness.servers import free_port

KEY = b"provider-shared-key-0123456789abcdef"
PERSON = Identity(201, "370102199001011234", "张小三")


@dataclass
class Timer:
    """Monotonic seconds that only move when told to."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[FakeProvider]:
    with fake_provider(KEY) as fake:
        yield fake


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def timer() -> Timer:
    return Timer()


def _provider(
    url: str,
    sleeps: list[float],
    timer: Timer,
    *,
    key: bytes = KEY,
    deadline: float = 5.0,
    attempts: int = 3,
    failures: int = 3,
) -> HttpProvider:
    return HttpProvider(
        url,
        key,
        deadline=deadline,
        attempts=attempts,
        backoff=0.1,
        backoff_max=0.3,
        breaker=CircuitBreaker(failure_threshold=failures, cooldown=30.0, timer=timer),
        sleep=sleeps.append,
        jitter=lambda _low, high: high,  # the largest delay full jitter may pick
    )


@pytest.fixture
def provider(server: FakeProvider, sleeps: list[float], timer: Timer) -> Iterator[HttpProvider]:
    made = _provider(server.url, sleeps, timer)
    yield made
    made.close()


# --- the contract -------------------------------------------------------------------------


def test_g2_requests_are_signed_and_carry_the_capture(
    server: FakeProvider, provider: HttpProvider
) -> None:
    assert provider.verify_face(PERSON, b"\x00jpeg\xff") == CaptureVerdict(Verdict.PASS)
    (seen,) = server.seen
    assert seen.path == VERIFY_PATH and seen.signature_ok
    assert seen.body == {
        "document_type": 201,
        "document_number": "370102199001011234",
        "name": "张小三",
        "capture": base64.b64encode(b"\x00jpeg\xff").decode(),
    }
    assert {"x-etax-timestamp", "x-etax-nonce", "x-request-id"} <= set(seen.headers)


def test_g2_a_request_signed_with_another_key_is_refused(
    server: FakeProvider, sleeps: list[float], timer: Timer
) -> None:
    impostor = _provider(server.url, sleeps, timer, key=b"another-key-0123456789abcdef-0000")
    with pytest.raises(ProviderBusy):
        impostor.verify_face(PERSON, b"pass")
    assert not server.seen[0].signature_ok
    impostor.close()


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ({"result": "pass"}, CaptureVerdict(Verdict.PASS)),
        ({"result": "mismatch"}, CaptureVerdict(Verdict.MISMATCH)),
        (
            {"result": "poor_image", "hint": "too_dark"},
            CaptureVerdict(Verdict.POOR_IMAGE, ImageHint.TOO_DARK),
        ),
        (
            {"result": "poor_image", "hint": "other_face"},
            CaptureVerdict(Verdict.POOR_IMAGE, ImageHint.OTHER_FACE_IN_VIEW),
        ),
        (
            {"result": "poor_image", "hint": "no_motion"},
            CaptureVerdict(Verdict.POOR_IMAGE, ImageHint.NO_REQUIRED_MOTION),
        ),
        ({"result": "poor_image"}, CaptureVerdict(Verdict.POOR_IMAGE)),
        # Fields the contract does not know are ignored (the provider may add some).
        ({"result": "pass", "score": 0.93, "trace": "x"}, CaptureVerdict(Verdict.PASS)),
    ],
)
def test_b7_verdicts_of_the_provider(
    server: FakeProvider, provider: HttpProvider, reply: dict[str, object], verdict: CaptureVerdict
) -> None:
    server.expect("ok", reply=reply)
    assert provider.verify_face(PERSON, b"capture") == verdict


def test_b1_identity_check(server: FakeProvider, provider: HttpProvider) -> None:
    server.expect("ok", reply={"match": True})
    assert provider.check_identity(PERSON) is True
    server.expect("ok", reply={"match": False})
    assert provider.check_identity(PERSON) is False
    assert [s.path for s in server.seen] == [IDENTITY_PATH, IDENTITY_PATH]
    assert "capture" not in server.seen[0].body


# --- faults -------------------------------------------------------------------------------


def test_g2_busy_is_retried_with_exponential_backoff_and_jitter(
    server: FakeProvider, provider: HttpProvider, sleeps: list[float]
) -> None:
    server.expect("busy", "throttled", "ok")
    assert provider.verify_face(PERSON, b"x").verdict is Verdict.PASS
    assert server.requests == 3
    assert sleeps == pytest.approx([0.1, 0.2])
    assert provider.breaker.state is BreakerState.CLOSED


def test_g2_busy_after_the_last_attempt_is_provider_busy(
    server: FakeProvider, provider: HttpProvider
) -> None:
    server.expect("busy")
    with pytest.raises(ProviderBusy):
        provider.verify_face(PERSON, b"x")
    assert server.requests == 3


def test_g2_the_providers_retry_after_reaches_the_caller(
    server: FakeProvider, provider: HttpProvider, sleeps: list[float]
) -> None:
    server.retry_after = "60"  # longer than the deadline: not waited for
    server.expect("busy")
    with pytest.raises(ProviderBusy) as caught:
        provider.verify_face(PERSON, b"x")
    assert server.requests == 1 and sleeps == []
    assert caught.value.retry_after is not None
    assert caught.value.retry_after.total_seconds() == 60


def test_g2_slow_provider_times_out_at_the_deadline(
    server: FakeProvider, sleeps: list[float], timer: Timer
) -> None:
    provider = _provider(server.url, sleeps, timer, deadline=0.3)
    server.expect("slow")
    with pytest.raises(ProviderBusy, match="timeout"):
        provider.verify_face(PERSON, b"x")
    assert server.requests == 1  # a timeout is not retried
    provider.close()


def test_g2_provider_down_is_provider_busy(sleeps: list[float], timer: Timer) -> None:
    provider = _provider(f"http://127.0.0.1:{free_port()}", sleeps, timer)
    with pytest.raises(ProviderBusy, match="unreachable"):
        provider.verify_face(PERSON, b"x")
    provider.close()


@pytest.mark.parametrize(
    ("behaviour", "reply"),
    [
        ("malformed", None),
        ("unexpected", None),
        ("error", None),
        ("ok", {"result": "maybe"}),
        ("ok", {"result": 1}),
        ("ok", {"result": "poor_image", "hint": "blurry"}),
        ("ok", ["pass"]),
    ],
)
def test_g2_a_reply_outside_the_contract_is_provider_busy(
    server: FakeProvider, provider: HttpProvider, behaviour: str, reply: object
) -> None:
    server.expect(behaviour, reply=reply)  # type: ignore[arg-type]
    with pytest.raises(ProviderBusy):
        provider.verify_face(PERSON, b"x")
    assert server.requests == 1


def test_g2_identity_reply_outside_the_contract_is_provider_busy(
    server: FakeProvider, provider: HttpProvider
) -> None:
    server.expect("ok", reply={"match": "yes"})
    with pytest.raises(ProviderBusy):
        provider.check_identity(PERSON)


# --- the circuit breaker ------------------------------------------------------------------


def test_g2_breaker_opens_fails_fast_and_probes_after_the_cool_down(
    server: FakeProvider, provider: HttpProvider, timer: Timer
) -> None:
    server.expect("error")
    for _ in range(3):
        with pytest.raises(ProviderBusy):
            provider.verify_face(PERSON, b"x")
    assert provider.breaker.state is BreakerState.OPEN
    assert server.requests == 3

    # Open: fails at once, without a request, and says when to come back.
    with pytest.raises(ProviderBusy) as caught:
        provider.verify_face(PERSON, b"x")
    assert server.requests == 3
    assert caught.value.retry_after is not None
    assert caught.value.retry_after.total_seconds() == pytest.approx(30)

    # After the cool-down one probe goes through; it fails, so the breaker opens again.
    timer.now += 30
    assert provider.breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(ProviderBusy):
        provider.verify_face(PERSON, b"x")
    assert server.requests == 4
    assert provider.breaker.state is BreakerState.OPEN
    with pytest.raises(ProviderBusy):
        provider.verify_face(PERSON, b"x")
    assert server.requests == 4

    # The next probe succeeds and closes it.
    timer.now += 30
    server.expect("ok", reply={"result": "pass"})
    assert provider.verify_face(PERSON, b"x").verdict is Verdict.PASS
    assert provider.breaker.state is BreakerState.CLOSED
    assert provider.verify_face(PERSON, b"x").verdict is Verdict.PASS
    assert server.requests == 6


@pytest.mark.parametrize("fault", ["down", "slow", "busy", "malformed"])
def test_g2_every_fault_counts_for_the_breaker(
    server: FakeProvider, sleeps: list[float], timer: Timer, fault: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}" if fault == "down" else server.url
    provider = _provider(url, sleeps, timer, deadline=0.3, failures=2)
    server.expect(fault)
    for _ in range(2):
        with pytest.raises(ProviderBusy):
            provider.verify_face(PERSON, b"x")
    assert provider.breaker.state is BreakerState.OPEN
    provider.close()


# --- through the service ------------------------------------------------------------------


def test_g2_face_service_with_http_provider_busy_then_recovering(
    face_factory: FaceFactory, server: FakeProvider
) -> None:
    face = face_factory(
        provider="http",
        provider_url=server.url,
        provider_key=SecretStr(KEY.decode()),
        provider_attempts=1,
    )
    ticket_id, token = face.scanned_ticket()
    server.expect("busy")
    with pytest.raises(grpc.RpcError) as caught:
        face.submit(ticket_id, token, b"capture")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert domain_error(caught.value).reason is Reason.FACE_SERVICE_BUSY
    server.expect("ok", reply={"result": "mismatch"})
    assert face.submit(ticket_id, token, b"capture").attempts_left == 2
    server.expect("ok", reply={"result": "pass"})
    assert face.submit(ticket_id, token, b"capture").proof
    assert all(seen.signature_ok for seen in server.seen)
