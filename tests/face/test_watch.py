"""WatchTicket: the state at once, each change, and an end on every final state, on expiry
by the clock, on cancellation and on shutdown (D2, G2)."""

from __future__ import annotations

import threading
import time
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


def test_watches_have_threads_of_their_own_and_a_cap(face_factory: FaceFactory) -> None:
    """Issue 11: streams cannot starve a service. Two unary workers and two stream slots:
    while two watches are open, unary calls are still served and a third watch is refused
    (RESOURCE_EXHAUSTED); a cancelled watch gives its slot back."""
    face = face_factory(max_workers=2, max_streams=2, max_watchers_per_ticket=10)
    tickets = [face.create().ticket_id for _ in range(3)]
    streams = [_watch(face, ticket_id) for ticket_id in tickets[:2]]
    for stream in streams:
        assert next(stream).ticket.state == S.TICKET_STATE_CREATED
    for _ in range(3):
        assert face.get(tickets[0]).state == S.TICKET_STATE_CREATED
    with pytest.raises(grpc.RpcError) as caught:
        next(_watch(face, tickets[2]))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert domain_error(caught.value).reason is Reason.TOO_MANY_REQUESTS
    streams[0].cancel()
    third = _watch(face, tickets[2])
    deadline = time.monotonic() + 5
    while True:  # the cancelled stream's slot comes back within one poll
        try:
            assert next(third).ticket.state == S.TICKET_STATE_CREATED
            break
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline
            time.sleep(0.1)
            third = _watch(face, tickets[2])
    third.cancel()
    streams[1].cancel()


def test_watches_of_one_ticket_are_capped(face_factory: FaceFactory) -> None:
    face = face_factory(max_watchers_per_ticket=2)
    ticket_id = face.create().ticket_id
    open_streams = [_watch(face, ticket_id) for _ in range(2)]
    for stream in open_streams:
        assert next(stream).ticket.state == S.TICKET_STATE_CREATED
    with pytest.raises(grpc.RpcError) as caught:
        next(_watch(face, ticket_id))
    assert domain_error(caught.value).reason is Reason.TOO_MANY_REQUESTS
    # Another ticket is not affected.
    other = face.create().ticket_id
    assert next(_watch(face, other)).ticket.state == S.TICKET_STATE_CREATED
    for stream in open_streams:
        stream.cancel()


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
