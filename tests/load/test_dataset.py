"""The data set-up of `make load` / `make bench` against the real platform (processes and
Envoy), and scripts/load.py driving ghz with what it wrote."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from etax.binding.v1 import binding_pb2, binding_pb2_grpc
from etax.common.v1 import types_pb2
from google.protobuf import json_format

from bench.dataset import legacy_password_hash, phone, resident_id, uscc
from bench.platform import Platform, running_platform
from etax_platform.documents import parse_document
from etax_platform.enterprise_codes import is_valid_uscc
from etax_platform.settings import REPO_ROOT
from services.auth.passwords import PasswordHasher, is_supported_hash

pytestmark = pytest.mark.slow
UNLIMITED = {"code_rate_per_second": 100_000, "code_burst": 100_000}


def _ghz() -> str | None:
    installed = REPO_ROOT / "build" / "bin" / "ghz"
    return str(installed) if installed.exists() else shutil.which("ghz")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(
        tmp_path_factory.mktemp("platform"), "embedded", gateway_overrides=UNLIMITED
    ) as running:
        yield running


def _set_up(platform: Platform, out: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.dataset",
            "--persons",
            "40",
            "--challenges",
            "10",
            "--sessions",
            "10",
            "--out",
            str(out),
            *(f"--{s}={platform.address(s)}" for s in ("auth", "binding", "sms", "face")),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_generated_persons_and_codes_are_valid() -> None:
    numbers = {resident_id(i) for i in range(3000)}
    assert len(numbers) == 3000
    for i in (0, 999, 1000, 2999):
        parse_document(types_pb2.DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD, resident_id(i))
    assert phone(7) == "13900000007"
    assert all(is_valid_uscc(uscc(n)) for n in range(1, 200))


def test_password_hash_is_the_format_auth_accepts_and_needs_no_rehash() -> None:
    encoded = legacy_password_hash()
    assert is_supported_hash(encoded)
    hasher = PasswordHasher(1)
    try:
        assert not hasher.needs_rehash(encoded)
        assert hasher.verify("Load-test-2026", encoded).matches
    finally:
        hasher.close()


def test_set_up_twice_writes_access_targets_that_all_pass(
    platform: Platform, tmp_path: Path
) -> None:
    _set_up(platform, tmp_path)
    again = _set_up(platform, tmp_path)  # idempotent: persons are looked up the second time
    assert "persons: 40 imported" in again.stdout
    requests = json.loads((tmp_path / "access-check.data.json").read_text())
    assert len(requests) == 80
    entries = set()
    with grpc.insecure_channel(platform.address("binding")) as channel:
        stub = binding_pb2_grpc.InternalBindingServiceStub(channel)
        for request in requests:
            message = json_format.ParseDict(request, binding_pb2.CheckAccessRequest())
            identity = stub.CheckAccess(message, timeout=10).identity
            assert identity.entry == message.target.entry
            entries.add(identity.entry)
    assert entries == {types_pb2.ENTRY_AGENT, types_pb2.ENTRY_SPECIFIC_SUBJECT}


@pytest.mark.skipif(_ghz() is None, reason="ghz is not installed (make load installs it)")
def test_load_runner_uses_the_written_data_through_the_gateway(
    platform: Platform, tmp_path: Path
) -> None:
    gateway = platform.gateway
    assert gateway is not None
    data = tmp_path / "data"
    _set_up(platform, data)
    out = tmp_path / "out"
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "load.py"),
            "--ghz",
            str(_ghz()),
            "--public",
            gateway.public_address,
            "--internal",
            gateway.internal_address,
            "--admin",
            gateway.admin_url.removeprefix("http://"),
            "--certs",
            str(gateway.certificates.directory),
            "--data-dir",
            str(data),
            "--out",
            str(out),
            "--only",
            "access-check",
            "sms-send",
            "--total",
            "60",
            "--concurrency",
            "6",
        ],
        check=True,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["access-check"]["status"] == {"OK": 60}
    assert summary["sms-send"]["status"] == {"OK": 60}
