"""WatchTicket: the state at once, each change, and an end on every final state, on expiry
by the clock, on cancellation and on shutdown (D2, G2)."""

from __future__ import annotations

import threading
from datetime import timedelta

import grpc
import pytest
from etax.face.v1 import face_pb2

from etax_platform.clock import ManualClock
from etax_platform.errors import Reason
from tests.face.conftest import Face, FaceFactory, domain_error

S = face_pb2


def _watch(face: Face, ticket_id: str, timeout: float = 20) -> grpc.Future:
    return face.public.WatchTicket(S.WatchTicketRequest(ticket_id=ticket_id), timeout=timeout)


def test_d2_watch_pushes_each_change_and_ends_on_pass(face: Face) -> None:
    created = face.create()
    stream = _watch(face, created.ticket_id)
    assert next(stream).ticket.state == S.TICKET_STATE_CREATED
    token = face.scan(created.qr_payload).scan_token
    assert next(stream).ticket.state == S.TICKET_STATE_SCANNED
    face.submit(created.ticket_id, token, b"dark")
    dark = next(stream).ticket
    assert (dark.state, dark.last_failure.hint) == (S.TICKET_STATE_SCANNED, S.IMAGE_HINT_TOO_DARK)
    face.submit(created.ticket_id, token, b"mismatch")
    assert next(stream).ticket.attempts_left == 2
    proof = face.submit(created.ticket_id, token, b"pass").proof
    passed = next(stream).ticket
    assert (passed.state, passed.proof) == (S.TICKET_STATE_PASSED, proof)
    assert list(stream) == []
    assert stream.code() == grpc.StatusCode.OK


def test_b7_watch_ends_when_the_ticket_fails(face: Face) -> None:
    ticket_id, token = face.scanned_ticket()
    stream = _watch(face, ticket_id)
    assert next(stream).ticket.state == S.TICKET_STATE_SCANNED
    for _ in range(3):
        face.submit(ticket_id, token, b"mismatch")
    states = [message.ticket.state for message in stream]
    assert states[-1] == S.TICKET_STATE_FAILED
    assert stream.code() == grpc.StatusCode.OK


def test_g2_watch_ends_on_expiry_by_the_clock(face: Face, clock: ManualClock) -> None:
    created = face.create()
    stream = _watch(face, created.ticket_id)
    assert next(stream).ticket.state == S.TICKET_STATE_CREATED
    clock.advance(timedelta(seconds=120))
    assert next(stream).ticket.state == S.TICKET_STATE_EXPIRED
    assert list(stream) == []


def test_watch_of_a_final_ticket_sends_it_once(face: Face) -> None:
    ticket_id, token = face.scanned_ticket()
    proof = face.submit(ticket_id, token, b"pass").proof
    face.redeem(proof)
    messages = list(_watch(face, ticket_id))
    assert [m.ticket.state for m in messages] == [S.TICKET_STATE_CONSUMED]


def test_watch_of_an_unknown_ticket_is_ticket_invalid(face: Face) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(_watch(face, "D" * 32))
    assert domain_error(caught.value).reason is Reason.TICKET_INVALID
    with pytest.raises(grpc.RpcError) as caught:
        list(_watch(face, "bad id"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_frees_its_thread_when_the_client_cancels(face_factory: FaceFactory) -> None:
    # Two worker threads: while two streams hold them, nothing else is served.
    face = face_factory(max_workers=2)
    ticket_id = face.create().ticket_id
    streams = [_watch(face, ticket_id) for _ in range(2)]
    for stream in streams:
        assert next(stream).ticket.state == S.TICKET_STATE_CREATED
    with pytest.raises(grpc.RpcError) as caught:
        face.public.GetTicket(S.GetTicketRequest(ticket_id=ticket_id), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for stream in streams:
        stream.cancel()
    assert face.get(ticket_id).state == S.TICKET_STATE_CREATED


def test_watch_ends_cleanly_on_server_shutdown(face: Face) -> None:
    ticket_id = face.create().ticket_id
    stream = _watch(face, ticket_id, timeout=60)
    assert next(stream).ticket.state == S.TICKET_STATE_CREATED
    stopper = threading.Thread(target=face.host.stop, kwargs={"grace": 30})
    stopper.start()
    # The stream ends by itself (OK), not by the grace period running out (CANCELLED).
    assert list(stream) == []
    assert stream.code() == grpc.StatusCode.OK
    stopper.join(10)
    assert not stopper.is_alive()
