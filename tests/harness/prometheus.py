"""A real Prometheus (Debian's package) for tests: a generated configuration scraping the
given processes every second, the platform's alert rules evaluated every second.

    with running_prometheus({"sms": ["127.0.0.1:9453"]}, ["127.0.0.1:9901"], workdir) as prom:
        prom.value('sum(etax_sms_codes_sent_total)')
        prom.wait_value('sum(etax_sms_codes_sent_total)', 5)
        prom.firing("EtaxFaceProviderBusy")
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from etax_platform.observe import RULES, PrometheusProcess, config
from tests.harness.servers import free_port


@dataclass
class RunningPrometheus:
    process: PrometheusProcess

    @property
    def url(self) -> str:
        return self.process.url

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of a query with one series (None: no series)."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def wait_value(self, expr: str, expected: float, timeout: float = 20.0) -> None:
        """Until the query shows `expected` (counters only grow: a value past it fails)."""
        deadline = time.monotonic() + timeout
        seen: float | None = None
        while time.monotonic() < deadline:
            seen = self.value(expr)
            if seen is not None and seen > expected:
                break
            if seen == expected:
                return
            time.sleep(0.25)
        raise AssertionError(f"{expr}: {seen}, expected {expected}")

    def wait_targets_up(self, count: int, timeout: float = 30.0) -> None:
        self.wait_value("count(up == 1)", count, timeout)

    def alerts(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/alerts", timeout=10)
        alerts: list[dict[str, Any]] = response.json()["data"]["alerts"]
        return alerts

    def wait_firing(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.firing(name):
                return
            time.sleep(0.25)
        raise AssertionError(f"{name} not firing after {timeout}s: {self.alerts()}")

    def firing(self, name: str) -> bool:
        return any(
            a["labels"]["alertname"] == name and a["state"] == "firing" for a in self.alerts()
        )


def rules_without_waiting(directory: Path) -> list[str]:
    """The platform's alert rules with every `for:` set to 0s: the same expressions, so a
    test need not wait out an alert's pending time."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(RULES.glob("*.yml")):
        target = directory / path.name
        target.write_text(re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", path.read_text()))
        written.append(str(target))
    return written


@contextlib.contextmanager
def running_prometheus(
    targets: Mapping[str, Sequence[str]], gateways: Sequence[str], workdir: Path
) -> Iterator[RunningPrometheus]:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(
        config(
            targets,
            gateways,
            rule_files=rules_without_waiting(workdir / "rules"),
            scrape_interval="1s",
            evaluation_interval="1s",
        )
    )
    process = PrometheusProcess(config_path, workdir / "data", free_port(), workdir / "log")
    try:
        process.wait_ready()
        yield RunningPrometheus(process)
    finally:
        process.stop()
