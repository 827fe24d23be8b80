"""The harness's loopback ports: every test server and the bench take theirs from
free_port, so two servers of one test must never be handed the same port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.harness import servers
from tests.harness.servers import free_port, free_ports_apart, port_is_free


def test_free_port_never_hands_out_a_port_twice_even_before_it_is_bound() -> None:
    # Nothing binds these while they are handed out, as when a test picks every port of
    # its processes first and starts them one by one (a service's metrics port, then its
    # gRPC port): a port only checked for being free now would come round again.
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_free_port_is_below_the_ephemeral_range_and_bindable() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = free_port()
        # A socket bound to port 0, or an outgoing connection, is never given such a port.
        assert 1024 <= port < low
        assert port_is_free(port)


def test_free_port_skips_a_port_in_use_and_says_when_none_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = next(
        port
        for port in range(20000, 30000)
        if {port, port + 1}.isdisjoint(servers._handed_out)
        and port_is_free(port)
        and port_is_free(port + 1)
    )
    monkeypatch.setattr(servers, "_below_ephemeral_range", lambda: range(first, first + 2))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", first))
        busy.listen()
        assert free_port() == first + 1
        with pytest.raises(RuntimeError, match="no free loopback port"):
            free_port()  # first is in use, first + 1 handed out already


def test_free_ports_apart_hands_out_the_whole_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service's replicas listen on its port + 100 * i (topology.REPLICA_PORT_STEP): the
    later ports of the run are as taken as the first."""
    first = free_ports_apart(3, 100)
    run = [first, first + 100, first + 200]
    assert all(port_is_free(port) for port in run)
    # Only the run's own ports left to choose from: none of them is handed out again.
    monkeypatch.setattr(servers, "_below_ephemeral_range", lambda: range(first, first + 201, 100))
    with pytest.raises(RuntimeError, match="no free loopback port"):
        free_port()
