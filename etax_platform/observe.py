"""`make observe`: a real Prometheus (Debian's package) on loopback, scraping the processes
of a running `make run` and its Envoy, with the platform's alert rules loaded.

    python -m etax_platform.observe                 # until Ctrl-C; prints where to look
    python -m etax_platform.observe --write-default # deploy/prometheus/prometheus.yml anew

The scrape targets come from the same settings the processes read (ETAX_<SERVICE>_
METRICS_PORT, ETAX_GATEWAY_ADMIN_PORT), so moved ports are followed. Prometheus keeps its
data under var/prometheus/ and listens on ETAX_OBSERVE_PORT (9090).
`deploy/prometheus/prometheus.yml` is this module's output for the default ports (a test
keeps it so) and what `promtool check config` checks in `make lint`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from etax_platform import topology
from etax_platform.settings import REPO_ROOT

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
DEFAULT_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules"


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """The small YAML this config needs (mappings, lists, strings, numbers)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, Mapping | list) and item:
                lines.append(f"{pad}{key}:")
                lines += _yaml(item, indent + 2)
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            nested = _yaml(item, indent + 2)
            lines.append(f"{pad}- {nested[0].lstrip()}")
            lines += nested[1:]
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return lines


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | dict):
        return "[]" if isinstance(value, list) else "{}"
    return f'"{value}"'


def config(
    targets: Mapping[str, Sequence[str]],
    gateways: Sequence[str],
    *,
    rule_files: Sequence[str],
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
) -> str:
    """A Prometheus configuration: one job per service (a target per process, replicas
    included), the gateways' Envoy admin (`/stats/prometheus`), the alert rules."""
    jobs: list[dict[str, Any]] = [
        {"job_name": service, "static_configs": [{"targets": list(addresses)}]}
        for service, addresses in targets.items()
    ]
    jobs.append(
        {
            "job_name": "gateway",
            "metrics_path": "/stats/prometheus",
            "static_configs": [{"targets": list(gateways)}],
        }
    )
    document = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval,
            "external_labels": {"platform": "etax"},
        },
        "rule_files": list(rule_files),
        "scrape_configs": jobs,
    }
    header = (
        "# Prometheus for the e-tax platform: written by `python -m etax_platform.observe"
        " --write-default`\n# for the default ports of `make run`; `make observe` writes"
        " one for the ports in use.\n"
    )
    return header + "\n".join(_yaml(document)) + "\n"


def run_targets(replicas: int = 1, gateways: int = 1) -> tuple[dict[str, list[str]], list[str]]:
    """The metrics addresses of `make run`'s processes (`make run-shared`'s: `replicas`
    per service, one gateway and web service per province), from their settings."""
    from etax_platform.gateway.settings import GatewaySettings  # noqa: PLC0415
    from services.auth.settings import AuthSettings  # noqa: PLC0415
    from services.binding.settings import BindingSettings  # noqa: PLC0415
    from services.face.settings import FaceSettings  # noqa: PLC0415
    from services.sms.settings import SmsSettings  # noqa: PLC0415
    from services.web.settings import WebSettings  # noqa: PLC0415

    classes = {
        "auth": AuthSettings,
        "binding": BindingSettings,
        "sms": SmsSettings,
        "face": FaceSettings,
        "web": WebSettings,
    }
    targets = {}
    for service, settings_class in classes.items():
        settings = settings_class()
        # Replica i's port is the base + 100 * i; the n-th province's web service's + n.
        count, step = (gateways, 1) if service == "web" else (replicas, topology.REPLICA_PORT_STEP)
        targets[service] = [
            topology.address(settings.metrics_port + step * i, settings.metrics_host)
            for i in range(count)
        ]
    admin = GatewaySettings().admin_port
    return targets, [topology.address(admin + i) for i in range(gateways)]


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(found).exists():
        raise SystemExit("prometheus is missing: `make system-deps` installs Debian's package")
    return found


class PrometheusProcess:
    """A Prometheus server on loopback with a given configuration (also the tests')."""

    def __init__(self, config_path: Path, data_dir: Path, port: int, log_path: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - Debian's binary, our arguments
            [
                prometheus_binary(),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={data_dir}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("prometheus did not become ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-default", action="store_true")
    parser.add_argument("--replicas", type=int, default=1, help="per service (make run-shared)")
    parser.add_argument("--gateways", type=int, default=1, help="provinces (make run-shared: 2)")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("ETAX_OBSERVE_PORT", "9090"))
    )
    args = parser.parse_args(argv)
    rule_files = sorted(str(path.relative_to(PROMETHEUS_DIR)) for path in RULES.glob("*.yml"))
    if args.write_default:
        targets = {
            name: [topology.address(service.metrics_port)]
            for name, service in topology.SERVICES.items()
        }
        gateway = [topology.address(topology.GATEWAY_PORTS.admin)]
        DEFAULT_CONFIG.write_text(config(targets, gateway, rule_files=rule_files))
        print(f"wrote {DEFAULT_CONFIG.relative_to(REPO_ROOT)}")
        return 0
    workdir = REPO_ROOT / "var" / "prometheus"
    workdir.mkdir(parents=True, exist_ok=True)
    targets, gateways = run_targets(args.replicas, args.gateways)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(
        config(targets, gateways, rule_files=[str(RULES / Path(f).name) for f in rule_files])
    )
    prometheus = PrometheusProcess(config_path, workdir / "data", args.port, workdir / "log")
    stopping = False

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        prometheus.wait_ready()
        query = "sum+by+(job)(rate(grpc_server_handled_total[1m]))"
        print(
            f"Prometheus on {prometheus.url} (data in var/prometheus), scraping:\n"
            + "".join(f"  {job:8} http://{t}/metrics\n" for job, ts in targets.items() for t in ts)
            + "".join(f"  gateway  http://{g}/stats/prometheus\n" for g in gateways)
            + f"Targets: {prometheus.url}/targets   alerts: {prometheus.url}/alerts\n"
            f"Try: {prometheus.url}/graph?g0.expr={query}\n"
            "Dashboard for Grafana: deploy/grafana/etax-platform.json. Ctrl-C stops.",
            flush=True,
        )
        while not stopping and prometheus.process.poll() is None:
            time.sleep(0.5)
    finally:
        prometheus.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
