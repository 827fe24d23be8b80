"""A stream cannot starve a service (issue 11.1): 1,000 concurrent WatchTicket streams
through the gateway while GetTicket keeps answering and face stays healthy.

Face runs as its own process, as `make run` starts it (in-process, the test's own threads
would share its interpreter). Watches beyond the caps (per ticket, per process, per route
at the gateway) are refused at once with RESOURCE_EXHAUSTED; unary calls have threads of
their own and never wait behind them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from etax.face.v1 import face_pb2, face_pb2_grpc

from etax_platform.certs import CertificatePaths
from tests.harness.gateway import RunningGateway, running_gateway
from tests.harness.processes import ServiceProcess

pytestmark = pytest.mark.slow
WATCHES = 1000
TICKETS = 300


@pytest.fixture
def face_process(tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        "face",
        {
            "ETAX_DATA_DIR": str(tmp_path / "face"),
            # A capped stream pool, so the test reaches the cap with 1,000 watches.
            "ETAX_FACE_MAX_STREAMS": "256",
            "ETAX_FACE_MAX_WORKERS": "16",
        },
        tmp_path / "face.log",
    )
    try:
        process.wait_serving("etax.face.v1.FaceService")
        yield process
    finally:
        process.terminate()


@pytest.fixture
def gateway(
    face_process: ServiceProcess, gateway_certs: CertificatePaths, tmp_path: Path
) -> Iterator[RunningGateway]:
    with running_gateway(
        {"face": face_process.address}, workdir=tmp_path / "gw", certificates=gateway_certs
    ) as running:
        running.wait_healthy("face")
        yield running


def test_a_thousand_watches_do_not_starve_face(
    face_process: ServiceProcess, gateway: RunningGateway
) -> None:
    with grpc.insecure_channel(face_process.address) as direct:
        internal = face_pb2_grpc.InternalFaceServiceStub(direct)
        tickets = [
            internal.CreateTicket(
                face_pb2.CreateTicketRequest(purpose=1, subject_ref="s" * 32), timeout=10
            ).ticket_id
            for _ in range(TICKETS)
        ]
    # Many connections, as many clients would open (Envoy allows 256 streams on each; gRPC
    # would share one connection between channels to one target without the option).
    channels = [
        grpc.insecure_channel(
            gateway.public_address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(9)
    ]
    watchers, page = channels[:-1], face_pb2_grpc.FaceServiceStub(channels[-1])
    stubs = [face_pb2_grpc.FaceServiceStub(channel) for channel in watchers]
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def first_answer(stream: Iterator[face_pb2.WatchTicketResponse]) -> None:
        try:
            next(stream)
            outcome = "open"
        except grpc.RpcError as error:
            outcome = error.code().name
        with lock:
            outcomes[outcome] += 1

    streams = [
        stubs[n % len(stubs)].WatchTicket(
            face_pb2.WatchTicketRequest(ticket_id=tickets[n % TICKETS]), timeout=120
        )
        for n in range(WATCHES)
    ]
    try:
        with futures.ThreadPoolExecutor(32) as pool:
            answers = [pool.submit(first_answer, stream) for stream in streams]
            # Meanwhile a page follows its ticket: every GetTicket answers within its
            # deadline (no UNAVAILABLE, no DEADLINE_EXCEEDED).
            for n in range(50):
                reply = page.GetTicket(
                    face_pb2.GetTicketRequest(ticket_id=tickets[n % TICKETS]), timeout=5
                )
                assert reply.ticket.state == face_pb2.TICKET_STATE_CREATED
                time.sleep(0.05)
            futures.wait(answers, timeout=110)
        assert sum(outcomes.values()) == WATCHES, outcomes
        assert set(outcomes) <= {"open", "RESOURCE_EXHAUSTED"}, outcomes
        # Every slot of the process is used, and nothing beyond it.
        assert outcomes["open"] == 256, outcomes
        assert gateway.cluster_health("face") == ["healthy"]
    finally:
        for stream in streams:
            stream.cancel()  # type: ignore[attr-defined]
        for channel in channels:
            channel.close()
