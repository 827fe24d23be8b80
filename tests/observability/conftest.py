"""One platform of real processes for the observability tests: the four services as
`python -m services.<name>` (each its own exporter), the real Envoy, a real Prometheus
scraping them every second, and an OTLP receiver that every process and Envoy export
their spans to. About 15 seconds to start; shared by the module's tests, which use fresh
people and phones and compare counters before and after what they play."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest

from bench.platform import Platform, running_platform
from etax_platform.clock import CST, ManualClock
from tests.e2e.story import Bureau
from tests.harness.otlp import OtlpReceiver, otlp_receiver
from tests.harness.prometheus import RunningPrometheus, running_prometheus


@dataclass
class Observed:
    platform: Platform
    prometheus: RunningPrometheus
    traces: OtlpReceiver
    bureau: Bureau

    def exporters(self) -> dict[str, str]:
        """Every process's scrape URL: the services' /metrics and Envoy's."""
        urls = {name: p.metrics_url for name, p in self.platform.services.items()}
        assert self.platform.gateway is not None
        urls["gateway"] = f"{self.platform.gateway.admin_url}/stats/prometheus"
        return urls


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    workdir = tmp_path_factory.mktemp("observed")
    with (
        otlp_receiver() as traces,
        running_platform(
            workdir / "platform",
            "embedded",
            gateway_overrides={"otel_endpoint": traces.endpoint},
            env={"ETAX_OTEL_ENDPOINT": traces.endpoint, "ETAX_LOG_FORMAT": "json"},
        ) as platform,
    ):
        assert platform.gateway is not None
        targets = {
            name: [f"127.0.0.1:{process.metrics_port}"]
            for name, process in platform.services.items()
        }
        gateways = [f"127.0.0.1:{platform.gateway.settings.admin_port}"]
        with running_prometheus(targets, gateways, workdir / "prometheus") as prometheus:
            prometheus.wait_targets_up(len(targets) + 1)
            platform.gateway.wait_for_jwks()
            bureau = Bureau(platform.gateway, ManualClock(datetime.now(CST)))
            try:
                yield Observed(platform, prometheus, traces, bureau)
            finally:
                bureau.close()
