"""The ghz scenarios of deploy/ghz and their runner (scripts/load.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from etax.auth.v1 import auth_pb2
from etax.binding.v1 import binding_pb2
from etax.sms.v1 import sms_pb2
from google.protobuf import json_format, symbol_database

from etax_platform.certs import CertificatePaths
from etax_platform.policy import service_policies
from etax_platform.settings import REPO_ROOT
from etax_platform.tokens import SigningKey
from tests.gateway.conftest import mint
from tests.gateway.upstreams import Upstreams
from tests.harness.gateway import RunningGateway

GHZ_DIR = REPO_ROOT / "deploy" / "ghz"
LOAD = REPO_ROOT / "scripts" / "load.py"
HOT_PATHS = {
    "etax.auth.v1.AuthService.StartLogin",
    "etax.auth.v1.AuthService.CompleteLoginWithCode",
    "etax.sms.v1.SmsService.SendCode",
    "etax.auth.v1.AuthService.RefreshSession",
    "etax.binding.v1.BindingService.ListMyIdentities",
    "etax.binding.v1.InternalBindingService.CheckAccess",
}


def _manifest() -> list[dict[str, object]]:
    return json.loads((GHZ_DIR / "scenarios.json").read_text())["scenarios"]


def _request_class(call: str) -> type:
    assert auth_pb2 and binding_pb2 and sms_pb2  # imported to register their messages
    service, method = call.rsplit(".", 1)
    pool = symbol_database.Default().pool
    input_type = pool.FindServiceByName(service).FindMethodByName(method).input_type
    return symbol_database.Default().GetSymbol(input_type.full_name)


def test_scenarios_cover_the_hot_paths_with_valid_requests() -> None:
    calls = set()
    for scenario in _manifest():
        config = json.loads((GHZ_DIR / f"{scenario['name']}.json").read_text())
        calls.add(config["call"])
        service = config["call"].rsplit(".", 1)[0]
        # Public RPCs go through the public listener, Internal* only through mTLS.
        public = all(p.public for p in service_policies(service))
        assert (scenario["listener"] == "public") == public
        assert ("cert" in config) == (scenario["listener"] == "internal")
        assert (REPO_ROOT / config["protoset"]).name == "etax_descriptor.pb"
        # Go templates stand for numbers here; the rest must be the request message.
        data = json.loads(re.sub(r"\{\{.*?\}\}", "0", json.dumps(config["data"])))
        json_format.ParseDict(data, _request_class(config["call"])())
    assert calls == HOT_PATHS


def test_dry_run_lists_commands_and_skips_scenarios_without_their_data(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(LOAD),
            "--dry-run",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "sms-send.json" in result.stdout
    assert "token-refresh: skipped" in result.stdout
    assert "access-check: skipped" in result.stdout


def test_single_use_requests_are_sent_once_each(tmp_path: Path) -> None:
    """A refresh token or login challenge works once: no second round-robin pass."""
    (tmp_path / "token-refresh.data.json").write_text(
        json.dumps([{"refresh_token": f"r{i}"} for i in range(3)])
    )
    (tmp_path / "access-check.data.json").write_text(json.dumps([{"person_id": "p"}]))

    def dry_run(*extra: str) -> dict[str, str]:
        result = subprocess.run(
            [sys.executable, str(LOAD), "--dry-run", "--data-dir", str(tmp_path), *extra],
            capture_output=True,
            text=True,
            check=True,
        )
        return {line.split()[2].rsplit("/", 1)[-1]: line for line in result.stdout.splitlines()}

    commands = dry_run("--only", "token-refresh", "access-check")
    assert "--total 3" in commands["token-refresh.json"]
    assert "--total" not in commands["access-check.json"]  # reusable: the config's own total
    assert "--total 2" in dry_run("--only", "token-refresh", "--total", "2")["token-refresh.json"]


def _ghz() -> str | None:
    installed = REPO_ROOT / "build" / "bin" / "ghz"
    return str(installed) if installed.exists() else shutil.which("ghz")


@pytest.mark.skipif(_ghz() is None, reason="ghz is not installed (make load installs it)")
def test_load_runner_drives_ghz_through_both_listeners(
    gateway: RunningGateway,
    upstreams: Upstreams,
    gateway_certs: CertificatePaths,
    signing_key: SigningKey,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "access-check.data.json").write_text(
        json.dumps(
            [{"person_id": f"p-{i}", "target": {"entry": "ENTRY_ENTERPRISE"}} for i in range(5)]
        )
    )
    (data / "identities-list.metadata.json").write_text(
        json.dumps({"authorization": f"Bearer {mint(signing_key)}"})
    )
    before = {m: upstreams.recorder.count(m) for m in ("CheckAccess", "ListMyIdentities")}
    out = tmp_path / "out"
    subprocess.run(
        [
            sys.executable,
            str(LOAD),
            "--ghz",
            str(_ghz()),
            "--public",
            gateway.public_address,
            "--internal",
            gateway.internal_address,
            "--admin",
            gateway.admin_url.removeprefix("http://"),
            "--certs",
            str(gateway_certs.directory),
            "--data-dir",
            str(data),
            "--out",
            str(out),
            "--only",
            "identities-list",
            "access-check",
            "--total",
            "40",
            "--concurrency",
            "4",
        ],
        check=True,
    )
    summary = json.loads((out / "summary.json").read_text())
    for name in ("identities-list", "access-check"):
        assert summary[name]["count"] == 40
        assert summary[name]["status"] == {"OK": 40}
    assert upstreams.recorder.count("CheckAccess") == before["CheckAccess"] + 40
    assert upstreams.recorder.count("ListMyIdentities") == before["ListMyIdentities"] + 40
