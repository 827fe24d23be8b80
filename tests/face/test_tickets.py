"""Tickets end to end over gRPC, on the in-process store and on Redis (B7, D2, D5, E1, G2)."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import grpc
import pytest
from etax.common.v1 import types_pb2
from etax.face.v1 import face_pb2

from etax_platform.clock import ManualClock, to_millis
from etax_platform.errors import Reason
from etax_platform.kv import KeyValueStore
from services.face.domain import MAX_CAPTURE_BYTES, CaptureVerdict, Identity
from services.face.providers.simulator import SimulatedProvider
from tests.face.conftest import (
    APP_IDENTITY,
    ID_NUMBER,
    IDENTITY,
    LOGIN,
    NAME,
    PERSON,
    Face,
    FaceFactory,
    domain_error,
)

S = face_pb2
UNLOCK = types_pb2.VERIFICATION_PURPOSE_UNLOCK


def _fails(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value


def _reason(error: grpc.RpcError) -> tuple[grpc.StatusCode, Reason]:
    return error.code(), domain_error(error).reason


class RecordingProvider(SimulatedProvider):
    """The simulator, remembering whom it was asked to compare."""

    def __init__(self) -> None:
        super().__init__(slow_seconds=0)
        self.identities: list[Identity] = []

    def verify_face(self, identity: Identity, capture: bytes) -> CaptureVerdict:
        self.identities.append(identity)
        return super().verify_face(identity, capture)


class GatedProvider(SimulatedProvider):
    """Holds every capture until released, to make a capture be in flight."""

    def __init__(self) -> None:
        super().__init__(slow_seconds=0)
        self.entered = threading.Event()
        self.release = threading.Event()

    def verify_face(self, identity: Identity, capture: bytes) -> CaptureVerdict:
        self.entered.set()
        self.release.wait(10)
        return super().verify_face(identity, capture)


class ClockMovingProvider(SimulatedProvider):
    """Takes `delay` of the manual clock to judge a capture (a slow provider)."""

    def __init__(self, clock: ManualClock, delay: timedelta) -> None:
        super().__init__(slow_seconds=0)
        self._clock = clock
        self._delay = delay

    def verify_face(self, identity: Identity, capture: bytes) -> CaptureVerdict:
        self._clock.advance(self._delay)
        return super().verify_face(identity, capture)


# --- the happy path and the single-use proof --------------------------------------------


def test_d2_scan_verification_passes_and_proof_is_redeemed_once(
    face: Face, clock: ManualClock
) -> None:
    created = face.create()
    assert created.expires_at.ToMilliseconds() == to_millis(clock.now() + timedelta(seconds=120))
    ticket = face.get(created.ticket_id)
    assert (ticket.state, ticket.purpose, ticket.attempts_left) == (
        S.TICKET_STATE_CREATED,
        LOGIN,
        3,
    )
    assert not ticket.proof

    scan = face.scan(created.qr_payload)
    assert scan.ticket_id == created.ticket_id
    assert (scan.purpose, scan.masked_name, scan.identity_required) == (LOGIN, "张*三", False)
    assert scan.scan_token
    assert face.get(created.ticket_id).state == S.TICKET_STATE_SCANNED

    passed = face.submit(created.ticket_id, scan.scan_token, b"pass:jpeg")
    assert passed.state == S.TICKET_STATE_PASSED
    assert passed.proof and not passed.HasField("last_failure")
    assert face.get(created.ticket_id).proof == passed.proof

    redeemed = face.redeem(passed.proof)
    assert redeemed.ticket_id == created.ticket_id
    assert redeemed.identity == IDENTITY
    assert redeemed.uncollected_failures == 0
    assert redeemed.verified_at.ToMilliseconds() == to_millis(clock.now())
    consumed = face.get(created.ticket_id)
    assert consumed.state == S.TICKET_STATE_CONSUMED and not consumed.proof

    replay = _fails(face.redeem, passed.proof)
    assert _reason(replay) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.TICKET_INVALID)


def test_g2_proof_serves_no_other_purpose_or_subject(face: Face) -> None:
    ticket_id, token = face.scanned_ticket()
    proof = face.submit(ticket_id, token, b"pass").proof
    for purpose, subject in ((UNLOCK, PERSON), (LOGIN, "person-43"), (UNLOCK, "person-43")):
        error = _fails(face.redeem, proof, purpose=purpose, subject_ref=subject)
        assert _reason(error) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.TICKET_INVALID)
    # A refused attempt does not burn the proof for its rightful holder.
    assert face.redeem(proof).ticket_id == ticket_id


def test_g2_tampered_or_empty_proof_is_refused(face: Face) -> None:
    ticket_id, token = face.scanned_ticket()
    proof = face.submit(ticket_id, token, b"pass").proof
    prefix, tid, expires, signature = proof.split(".")
    other_id, other_token = face.scanned_ticket()
    face.submit(other_id, other_token, b"pass")
    tampered = [
        f"{prefix}.{tid}.{expires}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}",
        f"{prefix}.{other_id}.{expires}.{signature}",
        f"{prefix}.{tid}.{int(expires) + 60_000}.{signature}",
        "faceproof1.not-a-proof",
        "x" * 100,
    ]
    for bad in tampered:
        assert _reason(_fails(face.redeem, bad))[1] is Reason.TICKET_INVALID
    empty = _fails(face.redeem, "")
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert domain_error(empty).metadata["field"] == "proof"
    assert face.redeem(proof).ticket_id == ticket_id


def test_g2_concurrent_redeems_have_exactly_one_winner(face: Face) -> None:
    ticket_id, token = face.scanned_ticket()
    proof = face.submit(ticket_id, token, b"pass").proof
    start = threading.Barrier(16)

    def redeem() -> str:
        start.wait()
        try:
            face.redeem(proof)
        except grpc.RpcError as error:
            return domain_error(error).reason.value
        return "won"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: redeem(), range(16)))
    assert results.count("won") == 1
    assert results.count(Reason.TICKET_INVALID.value) == 15


# --- B7 outcomes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capture", "hint", "words"),
    [
        (b"dark", S.IMAGE_HINT_TOO_DARK, "光线"),
        (b"other-face", S.IMAGE_HINT_OTHER_FACE_IN_VIEW, "其他人脸"),
        (b"no-motion", S.IMAGE_HINT_NO_REQUIRED_MOTION, "动作"),
    ],
)
def test_b7_poor_image_keeps_the_ticket_open_with_a_hint(
    face: Face, capture: bytes, hint: int, words: str
) -> None:
    ticket_id, token = face.scanned_ticket()
    ticket = face.submit(ticket_id, token, capture)
    assert ticket.state == S.TICKET_STATE_SCANNED
    assert ticket.last_failure.kind == S.FAILURE_KIND_POOR_IMAGE
    assert ticket.last_failure.hint == hint
    assert words in ticket.last_failure.message
    assert ticket.attempts_left == 3
    assert face.get(ticket_id) == ticket
    assert face.collect(ticket_id).new_failures == 0
    assert face.submit(ticket_id, token, b"pass").state == S.TICKET_STATE_PASSED


def test_b7_third_mismatch_fails_the_ticket_and_points_to_the_hall(face: Face) -> None:
    ticket_id, token = face.scanned_ticket()
    first = face.submit(ticket_id, token, b"mismatch")
    assert (first.state, first.attempts_left) == (S.TICKET_STATE_SCANNED, 2)
    assert first.last_failure.kind == S.FAILURE_KIND_MISMATCH
    assert "还可尝试2次" in first.last_failure.message
    second = face.submit(ticket_id, token, b"mismatch")
    assert (second.attempts_left, second.last_failure.kind) == (1, S.FAILURE_KIND_MISMATCH)
    third = face.submit(ticket_id, token, b"mismatch")
    assert (third.state, third.attempts_left) == (S.TICKET_STATE_FAILED, 0)
    assert third.last_failure.kind == S.FAILURE_KIND_GO_TO_HALL
    assert "办税服务大厅" in third.last_failure.message
    assert not third.proof

    after = _fails(face.submit, ticket_id, token, b"pass")
    assert _reason(after)[1] is Reason.TICKET_INVALID
    assert face.get(ticket_id).state == S.TICKET_STATE_FAILED
    collected = face.collect(ticket_id)
    assert (collected.new_failures, collected.state) == (3, S.TICKET_STATE_FAILED)
    assert face.collect(ticket_id).new_failures == 0


def test_e1_each_mismatch_is_reported_to_the_caller_exactly_once(face: Face) -> None:
    ticket_id, token = face.scanned_ticket()
    face.submit(ticket_id, token, b"mismatch")
    assert face.collect(ticket_id).new_failures == 1
    assert face.collect(ticket_id).new_failures == 0
    face.submit(ticket_id, token, b"mismatch")
    proof = face.submit(ticket_id, token, b"pass").proof
    assert face.redeem(proof).uncollected_failures == 1
    collected = face.collect(ticket_id)
    assert (collected.new_failures, collected.state) == (0, S.TICKET_STATE_CONSUMED)


def test_b7_busy_provider_is_retryable_and_counts_nothing(face: Face) -> None:
    ticket_id, token = face.scanned_ticket()
    error = _fails(face.submit, ticket_id, token, b"busy")
    assert _reason(error) == (grpc.StatusCode.UNAVAILABLE, Reason.FACE_SERVICE_BUSY)
    assert domain_error(error).retry_after is not None
    ticket = face.get(ticket_id)
    assert (ticket.state, ticket.attempts_left) == (S.TICKET_STATE_SCANNED, 3)
    assert ticket.last_failure.kind == S.FAILURE_KIND_SERVICE_BUSY
    assert face.collect(ticket_id).new_failures == 0
    assert face.submit(ticket_id, token, b"slow").state == S.TICKET_STATE_PASSED


def test_b7_unknown_capture_content_never_passes_the_simulator(face: Face) -> None:
    ticket_id, token = face.scanned_ticket()
    ticket = face.submit(ticket_id, token, b"\xff\xd8\xff\xe0 a real jpeg")
    assert ticket.last_failure.kind == S.FAILURE_KIND_MISMATCH


# --- expiry by the clock --------------------------------------------------------------------


def test_g2_ticket_expires_by_the_clock(face: Face, clock: ManualClock) -> None:
    created = face.create()
    scanned_id, token = face.scanned_ticket()
    clock.advance(timedelta(seconds=119))
    assert face.get(created.ticket_id).state == S.TICKET_STATE_CREATED
    clock.advance(timedelta(seconds=1))
    assert face.get(created.ticket_id).state == S.TICKET_STATE_EXPIRED
    assert face.get(scanned_id).state == S.TICKET_STATE_EXPIRED
    assert _reason(_fails(face.scan, created.qr_payload))[1] is Reason.TICKET_INVALID
    assert _reason(_fails(face.submit, scanned_id, token, b"pass"))[1] is Reason.TICKET_INVALID


def test_g2_ticket_lifetime_is_configurable(face_factory: FaceFactory, clock: ManualClock) -> None:
    face = face_factory(ticket_ttl_seconds=30)
    created = face.create()
    clock.advance(timedelta(seconds=30))
    assert face.get(created.ticket_id).state == S.TICKET_STATE_EXPIRED


def test_g2_unredeemed_proof_expires_by_the_clock(face: Face, clock: ManualClock) -> None:
    ticket_id, token = face.scanned_ticket()
    clock.advance(timedelta(seconds=100))
    passed = face.submit(ticket_id, token, b"pass")
    # Once passed, expires_at is the deadline for redeeming the proof.
    assert passed.expires_at.ToMilliseconds() == to_millis(clock.now() + timedelta(seconds=120))
    clock.advance(timedelta(seconds=120))
    assert face.get(ticket_id).state == S.TICKET_STATE_EXPIRED
    assert _reason(_fails(face.redeem, passed.proof))[1] is Reason.TICKET_INVALID


def test_g2_a_verdict_arriving_after_expiry_is_not_recorded(
    face_factory: FaceFactory, clock: ManualClock
) -> None:
    face = face_factory(with_provider=ClockMovingProvider(clock, timedelta(seconds=121)))
    ticket_id, token = face.scanned_ticket()
    error = _fails(face.submit, ticket_id, token, b"pass")
    assert _reason(error)[1] is Reason.TICKET_INVALID
    ticket = face.get(ticket_id)
    assert ticket.state == S.TICKET_STATE_EXPIRED and not ticket.proof


def test_g2_qr_payload_expires_with_its_ticket(face: Face, clock: ManualClock) -> None:
    created = face.create()
    clock.advance(timedelta(seconds=121))
    assert _reason(_fails(face.scan, created.qr_payload)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.TICKET_INVALID,
    )


# --- subject-less tickets (D5 face login) ---------------------------------------------------


def test_d5_subjectless_ticket_takes_the_identity_from_the_app(
    face_factory: FaceFactory,
) -> None:
    provider = RecordingProvider()
    face = face_factory(with_provider=provider)
    created = face.create(identity=None, subject_ref="challenge-7")
    scan = face.scan(created.qr_payload)
    assert scan.identity_required and scan.masked_name == ""
    missing = _fails(face.submit, created.ticket_id, scan.scan_token, b"pass")
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert domain_error(missing).metadata["field"] == "identity"
    assert face.get(created.ticket_id).state == S.TICKET_STATE_SCANNED

    passed = face.submit(created.ticket_id, scan.scan_token, b"pass", identity=APP_IDENTITY)
    assert provider.identities == [Identity(201, "110101198001011239", "李四")]
    redeemed = face.redeem(passed.proof, subject_ref="challenge-7")
    assert redeemed.identity == APP_IDENTITY


def test_identity_from_the_app_is_refused_when_the_ticket_has_a_subject(
    face_factory: FaceFactory,
) -> None:
    provider = RecordingProvider()
    face = face_factory(with_provider=provider)
    ticket_id, token = face.scanned_ticket()
    error = _fails(face.submit, ticket_id, token, b"pass", identity=APP_IDENTITY)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert domain_error(error).metadata["field"] == "identity"
    assert provider.identities == []
    face.submit(ticket_id, token, b"pass")
    assert provider.identities == [Identity(201, ID_NUMBER, NAME)]


# --- scanning ---------------------------------------------------------------------------------


def test_d2_scanning_again_hands_the_ticket_to_the_latest_device(face: Face) -> None:
    created = face.create()
    first = face.scan(created.qr_payload)
    second = face.scan(created.qr_payload)
    assert first.scan_token != second.scan_token
    stale = _fails(face.submit, created.ticket_id, first.scan_token, b"pass")
    assert _reason(stale)[1] is Reason.TICKET_INVALID
    assert face.submit(created.ticket_id, second.scan_token, b"pass").state == S.TICKET_STATE_PASSED
    assert _reason(_fails(face.scan, created.qr_payload))[1] is Reason.TICKET_INVALID


# --- bad input: a clear status, never INTERNAL ------------------------------------------------


def test_bad_input_gets_a_clear_status(face: Face) -> None:
    created = face.create()
    scan = face.scan(created.qr_payload)
    tid, token = created.ticket_id, scan.scan_token
    prefix, _, expires, signature = created.qr_payload.split(".")
    other = face.create()

    def invalid_argument(field: str, *call: object) -> None:
        error = _fails(*call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert domain_error(error).metadata["field"] == field

    def ticket_invalid(*call: object) -> None:
        assert _reason(_fails(*call)) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            Reason.TICKET_INVALID,
        )

    # Tickets and QR payloads.
    ticket_invalid(face.get, "A" * 32)
    invalid_argument("ticket_id", face.get, "")
    invalid_argument("ticket_id", face.get, "../../etc/passwd")
    ticket_invalid(face.scan, f"{prefix}.{other.ticket_id}.{expires}.{signature}")
    ticket_invalid(face.scan, f"{prefix}.{tid}.{int(expires) + 1000}.{signature}")
    ticket_invalid(face.scan, created.qr_payload[:-3] + "abc")
    ticket_invalid(face.scan, "https://example.com/not-ours")
    ticket_invalid(face.scan, "etaxface1.x.99999999999999999999999.y")
    invalid_argument("qr_payload", face.scan, "")
    invalid_argument("qr_payload", face.scan, "q" * 10_000)
    # Captures.
    invalid_argument("capture", face.submit, tid, token, b"")
    invalid_argument("capture", face.submit, tid, token, b"pass" + b"\0" * MAX_CAPTURE_BYTES)
    invalid_argument("scan_token", face.submit, tid, "", b"pass")
    ticket_invalid(face.submit, tid, "wrong-token", b"pass")
    ticket_invalid(face.submit, other.ticket_id, token, b"pass")
    ticket_invalid(face.submit, "B" * 32, token, b"pass")
    # Creating tickets.
    invalid_argument("purpose", face.create, IDENTITY, PERSON, 0)
    invalid_argument("purpose", face.create, IDENTITY, PERSON, 999)
    invalid_argument("subject_ref", face.create, IDENTITY, "")
    invalid_argument("subject_ref", face.create, IDENTITY, "s" * 129)
    bad_type = types_pb2.NamedDocument(document=types_pb2.Document(type=7, number="1"), name="x")
    invalid_argument("identity.document.type", face.create, bad_type)
    no_name = types_pb2.NamedDocument(document=IDENTITY.document)
    invalid_argument("identity.name", face.create, no_name)
    bad_number = types_pb2.NamedDocument(
        document=types_pb2.Document(type=201, number="37 01; DROP"), name=NAME
    )
    invalid_argument("identity.document.number", face.create, bad_number)
    # Failures and proofs.
    ticket_invalid(face.collect, "C" * 32)
    ticket_invalid(face.collect, tid, "person-43")
    invalid_argument("subject_ref", face.collect, tid, "")
    invalid_argument("purpose", face.redeem, "faceproof1.a.1.b", 0)

    # The ticket is untouched by all of this and still passes.
    assert face.submit(tid, token, b"pass").state == S.TICKET_STATE_PASSED


def test_a_capture_of_exactly_two_mib_is_accepted(face: Face) -> None:
    ticket_id, token = face.scanned_ticket()
    capture = b"pass" + b"\0" * (MAX_CAPTURE_BYTES - 4)
    assert face.submit(ticket_id, token, capture).state == S.TICKET_STATE_PASSED


# --- concurrency and replicas -----------------------------------------------------------------


def test_b7_a_second_capture_waits_for_the_one_being_judged(face_factory: FaceFactory) -> None:
    provider = GatedProvider()
    face = face_factory(with_provider=provider)
    ticket_id, token = face.scanned_ticket()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(face.submit, ticket_id, token, b"mismatch")
        assert provider.entered.wait(5)
        second = _fails(face.submit, ticket_id, token, b"pass")
        assert _reason(second) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.STATE_CONFLICT)
        provider.release.set()
        assert first.result(10).last_failure.kind == S.FAILURE_KIND_MISMATCH
    assert face.submit(ticket_id, token, b"pass").state == S.TICKET_STATE_PASSED


def test_b7_a_capture_held_by_a_lost_replica_is_freed_by_the_clock(
    face_factory: FaceFactory, clock: ManualClock
) -> None:
    provider = GatedProvider()
    face = face_factory(with_provider=provider)
    ticket_id, token = face.scanned_ticket()
    with ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(face.submit, ticket_id, token, b"mismatch")
        assert provider.entered.wait(5)
        clock.advance(timedelta(seconds=31))
        other = face_factory()  # another replica, same store
        assert other.submit(ticket_id, token, b"mismatch").attempts_left == 2
        provider.release.set()
        # The late verdict is still counted: no mismatch is ever lost.
        assert stuck.result(10).attempts_left == 1
    assert face.collect(ticket_id).new_failures == 2


def test_b7_concurrent_captures_never_exceed_the_mismatch_limit(face: Face) -> None:
    ticket_id, token = face.scanned_ticket()
    start = threading.Barrier(12)

    def submit() -> str:
        start.wait()
        try:
            return S.FailureKind.Name(face.submit(ticket_id, token, b"mismatch").last_failure.kind)
        except grpc.RpcError as error:
            return domain_error(error).reason.value

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: submit(), range(12)))
    judged = [r for r in results if r.startswith("FAILURE_KIND")]
    assert len(judged) <= 3
    assert set(results) - set(judged) <= {Reason.STATE_CONFLICT.value, Reason.TICKET_INVALID.value}
    assert face.collect(ticket_id).new_failures == len(judged)


def test_g2_any_replica_serves_any_step(face_factory: FaceFactory) -> None:
    first, second = face_factory(), face_factory()
    created = first.create()
    scan = second.scan(created.qr_payload)
    assert first.get(created.ticket_id).state == S.TICKET_STATE_SCANNED
    second.submit(created.ticket_id, scan.scan_token, b"mismatch")
    passed = first.submit(created.ticket_id, scan.scan_token, b"pass")
    redeemed = second.redeem(passed.proof)
    assert redeemed.uncollected_failures == 1
    assert _reason(_fails(first.redeem, passed.proof))[1] is Reason.TICKET_INVALID


# --- identity check (B1) -------------------------------------------------------------------


def test_b1_identity_check_asks_the_provider(face: Face) -> None:
    def check(name: str) -> bool:
        identity = types_pb2.NamedDocument(document=IDENTITY.document, name=name)
        request = face_pb2.CheckIdentityRequest(identity=identity)
        return face.internal.CheckIdentity(request, timeout=5).match

    assert check(NAME) is True
    assert check("不符张三") is False
    busy = _fails(check, "busy")
    assert _reason(busy) == (grpc.StatusCode.UNAVAILABLE, Reason.FACE_SERVICE_BUSY)
    empty = _fails(face.internal.CheckIdentity, face_pb2.CheckIdentityRequest(), timeout=5)
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- personal information ------------------------------------------------------------------


def test_identity_is_neither_stored_nor_logged_in_clear(
    face: Face, kv_store: KeyValueStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ticket_id, token = face.scanned_ticket()
    face.submit(ticket_id, token, b"mismatch-capture-bytes")
    proof = face.submit(ticket_id, token, b"pass-capture-bytes").proof
    record = kv_store.get(f"face:ticket:{ticket_id}")
    assert record is not None
    for secret in (ID_NUMBER.encode(), NAME.encode(), "张小三".encode("unicode_escape")):
        assert secret not in record.value
    face.redeem(proof)
    face.internal.CheckIdentity(face_pb2.CheckIdentityRequest(identity=IDENTITY), timeout=5)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged  # the flow is logged...
    for secret in (ID_NUMBER, NAME, "capture-bytes", ticket_id, token, proof):
        assert secret not in logged  # ...without anything personal or usable
