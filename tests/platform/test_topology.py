"""The topology table (etax_platform.topology) is where a service's name, port and targets
are written, once: settings defaults, the gateway, the launcher and the harnesses read it,
and every port and address stays overridable by its environment variable."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from etax_platform import gateway, launch, topology
from etax_platform.clients import open_channel
from etax_platform.gateway import GatewaySettings
from etax_platform.gateway.routes import cluster_of
from etax_platform.policy import contract_policies
from etax_platform.settings import REPO_ROOT
from etax_platform.topology import grpc_target
from services.auth.settings import AuthSettings
from services.binding.settings import BindingSettings
from services.face.settings import FaceSettings
from services.sms.settings import SmsSettings
from services.web.settings import WebSettings

SETTINGS = {
    "auth": AuthSettings,
    "binding": BindingSettings,
    "sms": SmsSettings,
    "face": FaceSettings,
    "web": WebSettings,
}


@pytest.fixture(autouse=True)
def _no_etax_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os  # noqa: PLC0415

    for name in list(os.environ):
        if name.startswith("ETAX_"):
            monkeypatch.delenv(name)


def test_every_service_settings_default_is_the_table() -> None:
    for name, settings_class in SETTINGS.items():
        service = topology.SERVICES[name]
        settings = settings_class()
        assert settings.port == service.port
        assert settings_class.model_config.get("env_prefix") == service.env_prefix
        for target_field, callee in service.targets.items():
            assert getattr(settings, target_field) == topology.default_address(callee)
    gateway_settings = GatewaySettings()
    ports = topology.GATEWAY_PORTS
    assert (
        gateway_settings.public_port,
        gateway_settings.internal_port,
        gateway_settings.admin_port,
    ) == (ports.public, ports.internal, ports.admin)
    for name in (*topology.GRPC_SERVICES, "web"):
        assert gateway_settings.upstream(name) == topology.default_address(name)
    assert gateway_settings.web_health_path == topology.SERVICES["web"].health
    health_names = {n: topology.SERVICES[n].health for n in topology.GRPC_SERVICES}
    assert health_names == gateway.UPSTREAMS


def test_every_existing_variable_still_moves_its_port_or_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    variables = {
        "ETAX_AUTH_PORT": "6051",
        "ETAX_AUTH_SMS_TARGET": "127.0.0.1:6053,127.0.0.1:6153",
        "ETAX_AUTH_FACE_TARGET": "face.internal:6054",
        "ETAX_AUTH_BINDING_TARGET": "127.0.0.1:6052",
        "ETAX_BINDING_PORT": "6052",
        "ETAX_BINDING_AUTH_TARGET": "127.0.0.1:6051",
        "ETAX_SMS_PORT": "6053",
        "ETAX_FACE_PORT": "6054",
        "ETAX_WEB_PORT": "6060",
        "ETAX_WEB_GATEWAY_TARGET": "127.0.0.1:7080",
        "ETAX_WEB_SMS_OUTBOX_TARGET": "127.0.0.1:6053",
        "ETAX_GATEWAY_PUBLIC_PORT": "7080",
        "ETAX_GATEWAY_INTERNAL_PORT": "7443",
        "ETAX_GATEWAY_ADMIN_PORT": "7901",
        "ETAX_GATEWAY_AUTH_ADDRESS": "127.0.0.1:6051",
        "ETAX_GATEWAY_BINDING_ADDRESS": "127.0.0.1:6052",
        "ETAX_GATEWAY_SMS_ADDRESS": "127.0.0.1:6053",
        "ETAX_GATEWAY_FACE_ADDRESS": "127.0.0.1:6054",
        "ETAX_GATEWAY_WEB_ADDRESS": "127.0.0.1:6060",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    for name, settings_class in SETTINGS.items():
        service = topology.SERVICES[name]
        settings = settings_class()
        assert settings.port == int(variables[service.port_variable])
        for target_field in service.targets:
            expected = variables[service.target_variable(target_field)]
            assert getattr(settings, target_field) == expected
    moved = GatewaySettings()
    assert (moved.public_port, moved.internal_port, moved.admin_port) == (7080, 7443, 7901)
    for name in (*topology.GRPC_SERVICES, "web"):
        assert moved.upstream(name) == variables[topology.gateway_address_variable(name)]


def test_a_target_is_an_address_or_a_list_of_replica_addresses() -> None:
    assert grpc_target("auth.internal:443") == "auth.internal:443"
    assert grpc_target("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert grpc_target(" [::1]:1, [::1]:2 ") == "ipv6:[::1]:1,[::1]:2"
    for bad in ("", "a.internal:1,b.internal:2", "127.0.0.1:1,[::1]:2", "127.0.0.1,127.0.0.1:2"):
        with pytest.raises(ValueError):
            grpc_target(bad)


def test_settings_refuse_a_target_that_is_no_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETAX_AUTH_SMS_TARGET", "sms-a:1,sms-b:1")
    with pytest.raises(ValueError, match="sms_target"):
        AuthSettings()


def test_every_contract_service_has_its_cluster_in_the_table() -> None:
    files = gateway.gateway_descriptor_set(REPO_ROOT / "gen" / "etax_descriptor.pb")
    services = {policy.service for policy in contract_policies(files)}
    assert {cluster_of(s) for s in services} == set(topology.GRPC_SERVICES)
    with pytest.raises(ValueError):
        cluster_of("etax.other.v1.OtherService")


# --- written once ----------------------------------------------------------------------------

# Code that must read the table instead of writing a port (tests may assert the documented
# defaults; docs and env profiles say them to people).
_CODE = [
    REPO_ROOT / "etax_platform",
    REPO_ROOT / "services",
    REPO_ROOT / "bench",
    REPO_ROOT / "scripts",
    REPO_ROOT / "tests" / "harness",
    REPO_ROOT / "tests" / "e2e",
]


def _literal_ports() -> list[int]:
    ports = [s.port for s in topology.SERVICES.values()]
    ports += [s.metrics_port for s in topology.SERVICES.values()]
    ports += [topology.GATEWAY_PORTS.public, topology.GATEWAY_PORTS.internal]
    return [*ports, topology.GATEWAY_PORTS.admin]


def _python_files() -> Iterator[Path]:
    for directory in _CODE:
        yield from directory.rglob("*.py")


# Python 3.12 splits f-strings into parts; before, an f-string is one STRING.
_FSTRING_PART = getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)


def _code_literals(path: Path) -> Iterator[tuple[int, str]]:
    """Numbers and strings of a module, without its docstrings (they may say a port)."""
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(body[0].lineno)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        literal = token.type in (tokenize.NUMBER, tokenize.STRING, _FSTRING_PART)
        if literal and token.start[0] not in docstrings:
            yield token.start[0], token.string


def test_no_default_port_is_written_outside_the_table() -> None:
    pattern = re.compile(r"(?<![\d.])(" + "|".join(map(str, _literal_ports())) + r")(?!\d)")
    found = []
    for path in _python_files():
        if path == REPO_ROOT / "etax_platform" / "topology.py":
            continue
        for number, literal in _code_literals(path):
            if pattern.search(literal):
                found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {literal}")
    assert not found, "ports written outside etax_platform/topology.py:\n" + "\n".join(found)


def test_no_health_checked_name_is_written_outside_the_table() -> None:
    names = [s.health for s in topology.SERVICES.values() if s.protocol == "grpc"]
    found = []
    for path in _python_files():
        if path == REPO_ROOT / "etax_platform" / "topology.py":
            continue
        text = path.read_text()
        found += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in names if f'"{n}"' in text]
    # The services register their own names (app.py) and tests check them; nothing else.
    assert all("/app.py" in f for f in found), found


def test_the_second_province_profile_agrees_with_the_table() -> None:
    (profile,) = [p for p in gateway.profiles() if p.name == "province-11.env"]
    settings = gateway.load_settings(profile)
    ports = topology.gateway_ports(1)
    assert (settings.public_port, settings.internal_port, settings.admin_port) == (
        ports.public,
        ports.internal,
        ports.admin,
    )
    assert settings.web_address == topology.address(topology.SERVICES["web"].port + 1)


# --- the launcher --------------------------------------------------------------------------


def _by_name(processes: list[launch.Process]) -> dict[str, dict[str, str]]:
    return {p.name: p.env for p in processes}


def test_make_run_starts_one_process_per_service_and_one_gateway() -> None:
    processes = launch.plan({})
    assert [p.name for p in processes] == [*topology.GRPC_SERVICES, "web", "gateway"]
    env = _by_name(processes)
    assert env["auth"]["ETAX_AUTH_PORT"] == str(topology.SERVICES["auth"].port)
    assert env["gateway"]["ETAX_GATEWAY_AUTH_ADDRESS"] == topology.default_address("auth")
    assert env["gateway"]["ETAX_GATEWAY_PROVINCE"] == topology.PROVINCE
    assert env["web"]["ETAX_WEB_GATEWAY_TARGET"] == topology.default_address(topology.GATEWAY)
    assert not any(p.restart for p in processes)


def test_a_moved_port_moves_every_target_and_address_that_names_it() -> None:
    env = _by_name(launch.plan({"ETAX_AUTH_PORT": "6051", "ETAX_GATEWAY_PUBLIC_PORT": "7080"}))
    assert env["auth"]["ETAX_AUTH_PORT"] == "6051"
    assert env["binding"]["ETAX_BINDING_AUTH_TARGET"] == "127.0.0.1:6051"
    assert env["gateway"]["ETAX_GATEWAY_AUTH_ADDRESS"] == "127.0.0.1:6051"
    assert env["web"]["ETAX_WEB_GATEWAY_TARGET"] == "127.0.0.1:7080"


def test_an_explicit_address_wins_over_the_derived_one() -> None:
    explicit = {"ETAX_GATEWAY_AUTH_ADDRESS": "10.0.0.5:50051", "ETAX_GATEWAY_WEB_ADDRESS": "x:1"}
    env = _by_name(launch.plan(explicit))
    assert env["gateway"]["ETAX_GATEWAY_AUTH_ADDRESS"] == "10.0.0.5:50051"
    assert env["gateway"]["ETAX_GATEWAY_WEB_ADDRESS"] == "x:1"


def test_the_shared_configuration_has_replicas_behind_every_gateway_of_every_province() -> None:
    processes = launch.plan({}, replicas=2, provinces=["37", "11"], restart_replicas=True)
    env = _by_name(processes)
    auth = topology.SERVICES["auth"]
    replicas = [f"127.0.0.1:{auth.port}", f"127.0.0.1:{auth.port + 100}"]
    assert env["auth-2"]["ETAX_AUTH_PORT"] == str(auth.port + 100)
    assert env["auth-2"]["ETAX_AUTH_METRICS_PORT"] == str(auth.metrics_port + 100)
    for name in ("gateway-37", "gateway-11"):
        assert env[name]["ETAX_GATEWAY_AUTH_ADDRESS"] == ",".join(replicas)
    assert env["binding-1"]["ETAX_BINDING_AUTH_TARGET"] == ",".join(replicas)
    sms = topology.SERVICES["sms"].port
    assert env["auth-1"]["ETAX_AUTH_SMS_TARGET"] == f"127.0.0.1:{sms},127.0.0.1:{sms + 100}"
    ports = topology.gateway_ports(1)
    assert (
        env["gateway-11"]["ETAX_GATEWAY_PROVINCE"],
        env["gateway-11"]["ETAX_GATEWAY_PUBLIC_PORT"],
        env["gateway-11"]["ETAX_GATEWAY_INTERNAL_PORT"],
        env["gateway-11"]["ETAX_GATEWAY_ADMIN_PORT"],
    ) == ("11", str(ports.public), str(ports.internal), str(ports.admin))
    web = topology.SERVICES["web"].port
    assert env["gateway-11"]["ETAX_GATEWAY_WEB_ADDRESS"] == f"127.0.0.1:{web + 1}"
    assert env["web-11"]["ETAX_WEB_GATEWAY_TARGET"] == topology.address(ports.public)
    restarted = {p.name for p in processes if p.restart}
    assert restarted == {f"{n}-{i}" for n in topology.GRPC_SERVICES for i in (1, 2)}
    # Every process has a port of its own.
    listening = Counter(
        value
        for process in processes
        for name, value in process.env.items()
        if name.endswith("_PORT")
        and (name == process_port_variable(process) or name.startswith("ETAX_GATEWAY_"))
    )
    assert max(listening.values()) == 1, listening


def process_port_variable(process: launch.Process) -> str:
    name = process.name.split("-")[0]
    return "" if name == "gateway" else topology.SERVICES[name].port_variable


# --- replicas behind one channel ---------------------------------------------------------------


_WHO = "/test.Replica/Who"


@pytest.fixture
def two_replicas() -> Iterator[list[tuple[grpc.Server, str]]]:
    """Two servers that answer /test.Replica/Who with their own name."""
    servers = []
    for n in range(2):
        server = grpc.server(futures.ThreadPoolExecutor(4))
        name = f"replica-{n}".encode()
        handler = grpc.unary_unary_rpc_method_handler(lambda _request, _context, name=name: name)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.Replica", {"Who": handler})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append((server, f"127.0.0.1:{port}"))
    yield servers
    for server, _ in servers:
        server.stop(0)


def test_a_channel_to_replicas_balances_over_all_and_leaves_a_stopped_one(
    two_replicas: list[tuple[grpc.Server, str]],
) -> None:
    channel = open_channel(",".join(address for _, address in two_replicas))
    who = channel.unary_unary(_WHO)
    try:
        seen = Counter(who(b"", timeout=5) for _ in range(40))
        # Round robin over the connected ones (the first calls may go before both are).
        assert set(seen) == {b"replica-0", b"replica-1"} and min(seen.values()) >= 10, seen
        two_replicas[0][0].stop(0)
        # The stopped one's connection is gone: every call goes to the other, none fails.
        assert Counter(who(b"", timeout=5) for _ in range(40)) == Counter({b"replica-1": 40})
    finally:
        channel.close()
