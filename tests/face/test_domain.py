"""Pure rules of tickets: enums mirror the contract, records round-trip, signatures bind."""

from __future__ import annotations

import enum
from dataclasses import replace
from datetime import timedelta

import pytest
from etax.face.v1 import face_pb2

from etax_platform.clock import ManualClock
from etax_platform.errors import DomainError, Reason
from services.face import domain
from services.face.domain import (
    CaptureVerdict,
    Failure,
    FailureKind,
    Identity,
    ImageHint,
    Signer,
    Ticket,
    TicketState,
    Verdict,
)

SIGNER = Signer(b"k" * 32)


@pytest.mark.parametrize(
    ("ours", "theirs", "prefix"),
    [
        (TicketState, face_pb2.TicketState, "TICKET_STATE_"),
        (FailureKind, face_pb2.FailureKind, "FAILURE_KIND_"),
        (ImageHint, face_pb2.ImageHint, "IMAGE_HINT_"),
    ],
)
def test_domain_enums_have_the_contracts_numbers(
    ours: type[enum.IntEnum], theirs: object, prefix: str
) -> None:
    for member in ours:
        assert theirs.Value(prefix + member.name) == member.value  # type: ignore[attr-defined]
    names = theirs.keys()  # type: ignore[attr-defined]
    contract = {n for n in names if not n.endswith("UNSPECIFIED")}
    assert contract == {prefix + m.name for m in ours if m.name != "UNSPECIFIED"}


def _ticket(clock: ManualClock, **changes: object) -> Ticket:
    ticket = domain.new_ticket(
        "T" * 32,
        purpose=2,
        subject_ref="person-1",
        identity_sealed="k1.sealed",
        now=clock.now(),
        ttl=timedelta(seconds=120),
        max_mismatches=3,
    )
    return replace(ticket, **changes)  # type: ignore[arg-type]


def test_records_round_trip_byte_for_byte(clock: ManualClock) -> None:
    clock.advance(timedelta(microseconds=123_457))
    full = _ticket(
        clock,
        state=TicketState.PASSED,
        scan_token_hash="h",
        mismatches=2,
        collected=1,
        last_failure=Failure(FailureKind.MISMATCH, ImageHint.UNSPECIFIED, "人脸识别未通过"),
        capture_id="c",
        capture_until=clock.now(),
        passed_identity_sealed="k1.x",
        proof="p",
        passed_at=clock.now(),
    )
    for ticket in (_ticket(clock), _ticket(clock, identity_sealed=None), full):
        raw = ticket.to_bytes()
        assert Ticket.from_bytes(raw) == ticket
        assert Ticket.from_bytes(raw).to_bytes() == raw


def test_b7_a_polled_view_read_from_the_record_is_the_view_of_the_whole_ticket(
    clock: ManualClock,
) -> None:
    """GetTicket and WatchTicket read `stored_view` (B7's states, the deadline, attempts
    left, the proof only while passed): the same answer as `view` of the whole ticket."""
    now = clock.now()
    failure = Failure(FailureKind.POOR_IMAGE, ImageHint.TOO_DARK, "环境光线较暗")
    tickets = [
        _ticket(clock),
        _ticket(clock, identity_sealed=None, state=TicketState.SCANNED, last_failure=failure),
        _ticket(clock, state=TicketState.PASSED, proof="p", mismatches=1),
        _ticket(clock, state=TicketState.FAILED, mismatches=5),  # more than allowed: 0 left
        _ticket(clock, state=TicketState.CONSUMED, proof="p"),
    ]
    for ticket in tickets:
        for at in (now, ticket.expires_at - timedelta(microseconds=1), ticket.expires_at):
            assert domain.stored_view(ticket.to_bytes(), at) == domain.view(ticket, at)
    passed = tickets[2]
    assert domain.stored_view(passed.to_bytes(), now).proof == "p"
    expired = domain.stored_view(passed.to_bytes(), passed.expires_at)
    assert expired.state is TicketState.EXPIRED and expired.proof == ""


def test_g2_qr_payload_opens_only_genuine_and_unexpired(clock: ManualClock) -> None:
    expires = clock.now() + timedelta(seconds=120)
    payload = SIGNER.qr_payload("T" * 32, expires)
    assert SIGNER.open_qr_payload(payload, clock.now()) == "T" * 32
    assert Signer(b"x" * 32).qr_payload("T" * 32, expires) != payload
    with pytest.raises(DomainError) as caught:
        Signer(b"x" * 32).open_qr_payload(payload, clock.now())
    assert caught.value.reason is Reason.TICKET_INVALID
    with pytest.raises(DomainError):
        SIGNER.open_qr_payload(payload, expires)


def test_g2_proof_is_bound_to_ticket_purpose_and_subject(clock: ManualClock) -> None:
    expires = clock.now() + timedelta(seconds=60)
    proof = SIGNER.proof("T" * 32, 2, "person-1", expires)
    assert SIGNER.open_proof(proof, 2, "person-1", clock.now()) == "T" * 32
    for purpose, subject, now in (
        (3, "person-1", clock.now()),
        (2, "person-2", clock.now()),
        (2, "person-1", expires),
    ):
        with pytest.raises(DomainError) as caught:
            SIGNER.open_proof(proof, purpose, subject, now)
        assert caught.value.reason is Reason.TICKET_INVALID
    # A label per use: a QR signature never passes for a proof.
    assert SIGNER.sign("qr", "a") != SIGNER.sign("proof", "a")


def test_identity_never_shows_in_clear(clock: ManualClock) -> None:
    identity = Identity.checked(201, " 37010219900101123x ", " 张小三 ")
    assert identity == Identity(201, "37010219900101123X", "张小三")
    for text in (repr(identity), str(identity), f"{identity}"):
        assert "37010219900101123X" not in text and "张小三" not in text


def test_b7_state_is_expired_past_the_deadline_only_while_not_final(clock: ManualClock) -> None:
    ticket = _ticket(clock)
    later = clock.now() + timedelta(seconds=120)
    assert ticket.state_at(later - timedelta(microseconds=1)) is TicketState.CREATED
    assert ticket.state_at(later) is TicketState.EXPIRED
    for final in (TicketState.FAILED, TicketState.CONSUMED):
        assert replace(ticket, state=final).state_at(later) is final


def test_b7_mismatches_end_in_go_to_hall_and_late_verdicts_change_nothing(
    clock: ManualClock,
) -> None:
    now = clock.now()
    ticket = replace(_ticket(clock), state=TicketState.SCANNED)
    mismatch = CaptureVerdict(Verdict.MISMATCH)
    for expected_left in (2, 1):
        ticket = domain.capture_judged(
            ticket, "", mismatch, now, proof="", proof_expires_at=now, passed_identity_sealed=""
        )
        assert domain.view(ticket, now).attempts_left == expected_left
    ticket = domain.capture_judged(
        ticket, "", mismatch, now, proof="", proof_expires_at=now, passed_identity_sealed=""
    )
    assert ticket.state is TicketState.FAILED
    assert ticket.last_failure == Failure(FailureKind.GO_TO_HALL, message=domain.HALL_MESSAGE)
    after = domain.capture_judged(
        ticket,
        "",
        CaptureVerdict(Verdict.PASS),
        now,
        proof="p",
        proof_expires_at=now,
        passed_identity_sealed="s",
    )
    assert after == ticket


def test_capture_size_limit_is_two_mib() -> None:
    assert domain.check_capture(b"x" * domain.MAX_CAPTURE_BYTES)
    for bad in (b"", b"x" * (domain.MAX_CAPTURE_BYTES + 1)):
        with pytest.raises(DomainError) as caught:
            domain.check_capture(bad)
        assert caught.value.metadata["field"] == "capture"
