"""`make load`: the ghz scenarios of deploy/ghz/ against a running gateway.

Each scenario is a ghz config (deploy/ghz/<name>.json) plus, where the calls need real
data (challenges, refresh tokens, access tokens, person ids), files a data set-up writes
into the data directory first:

    <data-dir>/<name>.data.json      a JSON array of requests, one per call (round-robin)
    <data-dir>/<name>.metadata.json  call metadata, e.g. {"authorization": "Bearer ..."}

A scenario that needs a file that is missing is skipped (listed as such). Reports: ghz's
JSON per scenario and summary.json in the output directory.

    scripts/load.py --ghz build/bin/ghz [--only sms-send] [--duration 10s] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from etax_platform import topology

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "deploy" / "ghz" / "scenarios.json"
DESCRIPTOR = ROOT / "gen" / "etax_descriptor.pb"


@dataclass(frozen=True)
class Scenario:
    name: str
    listener: str
    needs: tuple[str, ...]
    single_use: bool = False

    @property
    def config(self) -> Path:
        return SCENARIOS.parent / f"{self.name}.json"

    def data_file(self, data_dir: Path) -> Path:
        return data_dir / f"{self.name}.data.json"

    def metadata_file(self, data_dir: Path) -> Path:
        return data_dir / f"{self.name}.metadata.json"

    def missing(self, data_dir: Path) -> list[Path]:
        files = {"data": self.data_file(data_dir), "metadata": self.metadata_file(data_dir)}
        return [files[need] for need in self.needs if not files[need].exists()]


def scenarios() -> list[Scenario]:
    manifest = json.loads(SCENARIOS.read_text())
    return [
        Scenario(s["name"], s["listener"], tuple(s.get("needs", ())), s.get("single_use", False))
        for s in manifest["scenarios"]
    ]


def command(ghz: str, scenario: Scenario, args: argparse.Namespace, report: Path) -> list[str]:
    """The ghz command line: the config, with the host, paths and overrides of this run."""
    certs = Path(args.certs)
    cmd = [
        ghz,
        "--config",
        str(scenario.config),
        "--protoset",
        str(DESCRIPTOR),
        "--format",
        "json",
        "--output",
        str(report),
    ]
    if scenario.listener == "internal":
        cmd += [
            "--cacert",
            str(certs / "ca.pem"),
            "--cert",
            str(certs / f"{args.system}.pem"),
            "--key",
            str(certs / f"{args.system}-key.pem"),
            "--cname",
            "localhost",
        ]
    data_file = scenario.data_file(args.data_dir)
    if data_file.exists():
        cmd += ["--data-file", str(data_file)]
    metadata_file = scenario.metadata_file(args.data_dir)
    if metadata_file.exists():
        cmd += ["--metadata-file", str(metadata_file)]
    total = args.total
    if scenario.single_use and data_file.exists():
        # ghz sends the data round-robin; a second round would only be refused.
        available = len(json.loads(data_file.read_text()))
        total = available if total is None else min(total, available)
    if total is not None and args.duration is None:
        cmd += ["--duration", "0"]  # a count instead of the config's duration
    overrides = {**vars(args), "total": total}
    for flag in ("duration", "total", "concurrency", "connections", "rps"):
        value = overrides[flag]
        if value is not None:
            cmd += [f"--{flag}", str(value)]
    cmd.append(args.internal if scenario.listener == "internal" else args.public)
    return cmd


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Calls, rate, latency percentiles (ms) and status counts from a ghz JSON report."""
    percentiles = {
        f"p{int(p['percentage'])}_ms": round(p["latency"] / 1e6, 2)
        for p in report.get("latencyDistribution") or []
    }
    return {
        "count": report.get("count", 0),
        "rps": round(report.get("rps", 0.0), 1),
        "average_ms": round(report.get("average", 0) / 1e6, 2),
        **percentiles,
        "status": report.get("statusCodeDistribution") or {},
        "errors": report.get("errorDistribution") or {},
    }


def _gateway_ready(admin: str) -> bool:
    try:
        return httpx.get(f"http://{admin}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    pinned = ROOT / "build" / "bin" / "ghz"  # where `make load` installs it
    on_path = shutil.which("ghz")
    parser.add_argument(
        "--ghz", default=on_path if on_path and not pinned.exists() else str(pinned)
    )
    ports = topology.GATEWAY_PORTS
    parser.add_argument("--public", default=topology.address(ports.public), help="public listener")
    parser.add_argument(
        "--internal", default=topology.address(ports.internal), help="internal listener (mTLS)"
    )
    parser.add_argument(
        "--admin", default=topology.address(ports.admin), help="Envoy admin, for /ready"
    )
    parser.add_argument("--certs", default=str(ROOT / "deploy" / "certs"))
    parser.add_argument("--system", default="hall", help="client certificate for internal")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "var" / "load")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "load" / "results")
    parser.add_argument("--only", nargs="*", help="scenario names (default: all)")
    parser.add_argument("--duration", help="ghz --duration for every scenario, e.g. 10s")
    parser.add_argument("--total", type=int, help="ghz --total for every scenario")
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--connections", type=int)
    parser.add_argument("--rps", type=int)
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)

    chosen = [s for s in scenarios() if not args.only or s.name in args.only]
    if args.only and len(chosen) != len(set(args.only)):
        known = ", ".join(s.name for s in scenarios())
        parser.error(f"unknown scenario in {args.only}; known: {known}")
    if not args.dry_run:
        if not Path(args.ghz).exists():
            print(f"ghz not found at {args.ghz}: run `make load`", file=sys.stderr)
            return 2
        if not _gateway_ready(args.admin):
            print(f"no gateway ready at {args.admin}: start it (`make run`)", file=sys.stderr)
            return 2
    return run(chosen, args)


def run(chosen: list[Scenario], args: argparse.Namespace) -> int:
    """Runs the scenarios one after another; 1 if ghz itself failed on any."""
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    failed = False
    for scenario in chosen:
        missing = scenario.missing(args.data_dir)
        if missing:
            names = ", ".join(str(m) for m in missing)
            print(f"{scenario.name}: skipped, needs {names}")
            summary[scenario.name] = {"skipped": f"needs {names}"}
            continue
        report = args.out / f"{scenario.name}.json"
        cmd = command(args.ghz, scenario, args, report)
        if args.dry_run:
            print(" ".join(cmd))
            continue
        print(f"{scenario.name}: running", flush=True)
        result = subprocess.run(cmd, cwd=ROOT, check=False)  # noqa: S603
        if result.returncode != 0 or not report.exists():
            print(f"{scenario.name}: ghz failed with {result.returncode}", file=sys.stderr)
            summary[scenario.name] = {"failed": result.returncode}
            failed = True
            continue
        summary[scenario.name] = summarize(json.loads(report.read_text()))
        print(f"{scenario.name}: {json.dumps(summary[scenario.name], ensure_ascii=False)}")
    if not args.dry_run:
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
        print(f"reports in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
