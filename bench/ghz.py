"""ghz runs for the benchmark: a scenario of deploy/ghz (or the echo call), pointed at a
given address, with given data, pinned to given cores, and its JSON report summarised."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

from bench.echo_server import METHOD
from etax_platform.settings import REPO_ROOT

GHZ_CONFIGS = REPO_ROOT / "deploy" / "ghz"
DESCRIPTOR = REPO_ROOT / "gen" / "etax_descriptor.pb"
_TLS_KEYS = ("cacert", "cert", "key", "cname", "insecure", "skipTLS")


class ScenarioFailed(RuntimeError):
    """A run that ghz could not finish or whose calls did not all succeed."""


def echo_protoset(path: Path) -> Path:
    """A descriptor set for bench.Echo/Echo with a one-field message: the echo servers
    answer whatever bytes come, so ghz only needs a message to encode."""
    service, method = METHOD.strip("/").split("/")
    package, name = service.rsplit(".", 1)
    echo = descriptor_pb2.FileDescriptorProto(
        name="bench/echo.proto", package=package, syntax="proto3"
    )
    message = echo.message_type.add(name="EchoMessage")
    message.field.add(
        name="payload",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        json_name="payload",
    )
    echo.service.add(name=name).method.add(
        name=method,
        input_type=f".{package}.EchoMessage",
        output_type=f".{package}.EchoMessage",
    )
    files = descriptor_pb2.FileDescriptorSet(file=[echo])
    path.write_bytes(files.SerializeToString())
    return path


@dataclass
class Load:
    """One ghz run: what to call, where, how hard."""

    name: str
    call: str
    address: str
    data: Any = None  # a request (dict) or a list of them, used round-robin
    metadata: dict[str, str] | None = None
    base: str | None = None  # a deploy/ghz scenario to start from
    protoset: Path = DESCRIPTOR
    tls: dict[str, str] | None = None  # cacert, cert, key, cname (mutual TLS)
    concurrency: int = 50
    connections: int = 4
    duration: str | None = "8s"
    total: int | None = None
    skip_first: int = 0
    warm_up_calls: int = 0  # an unrecorded run of this many calls before the measured one
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if self.base:
            config = json.loads((GHZ_CONFIGS / f"{self.base}.json").read_text())
            config.pop("name", None)
            if config["call"] != self.call:
                raise ValueError(f"{self.base} calls {config['call']}, not {self.call}")
        for key in _TLS_KEYS:
            config.pop(key, None)
        config |= {
            "call": self.call,
            "protoset": str(self.protoset),
            "concurrency": self.concurrency,
            "connections": self.connections,
            "timeout": "20s",
            "format": "json",
        }
        config.pop("duration", None)
        config.pop("total", None)
        config.pop("duration-stop", None)
        if self.total is not None:
            config["total"] = self.total
        else:
            config["duration"] = self.duration
            config["duration-stop"] = "wait"
        if self.skip_first:
            config["skipFirst"] = self.skip_first
        if self.tls:
            config |= self.tls
        else:
            config["insecure"] = True
        if self.data is not None:
            config["data"] = self.data
        if self.metadata is not None:
            config["metadata"] = self.metadata
        return config | self.extra


def run(ghz: Path, load: Load, workdir: Path, cpus: frozenset[int]) -> dict[str, Any]:
    """Runs ghz on `cpus` and returns its JSON report; ScenarioFailed unless every call
    succeeded."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{load.name}.ghz.json"
    report_path = workdir / f"{load.name}.report.json"
    config_path.write_text(json.dumps(load.config(), ensure_ascii=False))
    result = subprocess.run(  # noqa: S603 - our ghz, our config
        [str(ghz), "--config", str(config_path), "--output", str(report_path), load.address],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    if result.returncode != 0 or not report_path.exists():
        raise ScenarioFailed(
            f"{load.name}: ghz exited with {result.returncode}\n{result.stdout}{result.stderr}"
        )
    report: dict[str, Any] = json.loads(report_path.read_text())
    statuses = report.get("statusCodeDistribution") or {}
    if set(statuses) != {"OK"}:
        errors = report.get("errorDistribution") or {}
        raise ScenarioFailed(f"{load.name}: not every call succeeded: {statuses} {errors}")
    return report


def summarize(report: dict[str, Any]) -> dict[str, float]:
    """Calls, rate and latency percentiles (ms) of a ghz JSON report."""
    percentiles = {
        int(p["percentage"]): p["latency"] / 1e6 for p in report.get("latencyDistribution") or []
    }
    return {
        "count": float(report["count"]),
        "rps": float(report["rps"]),
        "p50_ms": percentiles[50],
        "p90_ms": percentiles[90],
        "p99_ms": percentiles[99],
        "average_ms": report["average"] / 1e6,
    }
