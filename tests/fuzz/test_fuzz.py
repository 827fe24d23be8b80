"""Issue 11, items 4 and 9: malformed and hostile requests to every RPC (directly, and
through the gateway's public and internal listeners) and to every JSON route, with and
without a session, never answer INTERNAL, UNKNOWN or HTTP 5xx, never log an ERROR or a
traceback, and leave every service SERVING (DESIGN.md, Errors: bad bytes are
INVALID_ARGUMENT).

A bounded run: ETAX_FUZZ_CASES cases per category (seed ETAX_FUZZ_SEED); `make fuzz`
sends 100,000 and more. A failure prints the seed, the case and the request, and the
`make fuzz` line that replays it.
"""

from __future__ import annotations

import http.client
import json
import os

import pytest

from tests.fuzz.generate import CATEGORIES, Pool
from tests.fuzz.run import LogWatch, Targets, not_serving, run
from tests.harness.gateway import RunningGateway

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("ETAX_FUZZ_SEED", "2026"))
CASES = int(os.environ.get("ETAX_FUZZ_CASES", "300"))
# Bodies of megabytes and huge query strings: a few make the point.
FEWER = {"grpc-oversized": 6, "http-oversized": 6, "http-huge-query": 40}


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_no_internal_no_5xx_no_logged_error(category: str, targets: Targets, pool: Pool) -> None:
    watch = LogWatch()
    with watch.watching():
        summary = run(
            targets, pool, SEED, FEWER.get(category, CASES), threads=8, categories=[category]
        )
    summary.log_errors, summary.log_warnings = watch.errors, watch.warnings
    assert summary.ok, summary.report()


def test_every_service_is_still_serving_after_the_fuzz(targets: Targets) -> None:
    assert not_serving(targets) == []


def _gateway_answer(
    gateway: RunningGateway, verb: str, path: str, body: bytes | None
) -> tuple[int, str, bytes]:
    host, port = gateway.public_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(verb, path, body=body, headers={"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, response.getheader("content-type") or "", response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("verb", "path", "body", "status"),
    [
        pytest.param("GET", "/v1/no-such-route", None, 404, id="unknown-route"),
        pytest.param("PATCH", "/v1/auth/logins", b"{}", 404, id="wrong-method"),
        pytest.param("GET", "/v1/me/profile", None, 401, id="no-token"),
        pytest.param("POST", "/v1/registrations", b'{"province": ', 400, id="bad-json"),
        pytest.param(
            "POST",
            "/v1/auth/logins",
            # Just over the gateway's 4 MiB JSON limit: a larger body is still being sent
            # when Envoy answers and closes, and the client may see a reset instead.
            b'{"account":"' + b"A" * (4 * 1024 * 1024 + 64) + b'"}',
            None,
            id="body-too-large",
        ),
    ],
)
def test_errors_the_gateway_makes_itself_are_json_status(
    fuzz_gateway: RunningGateway, verb: str, path: str, body: bytes | None, status: int | None
) -> None:
    """DESIGN.md, Errors: the same JSON shape as the services' (google.rpc.Status with an
    ErrorInfo of domain etax and a zh-CN LocalizedMessage). A body over the gRPC limit is
    refused by Envoy (413) or by the service (429, RESOURCE_EXHAUSTED); either is a 4xx."""
    answered, content_type, raw = _gateway_answer(fuzz_gateway, verb, path, body)
    assert answered == status if status is not None else 400 <= answered < 500
    assert content_type.startswith("application/json"), (content_type, raw[:200])
    error = json.loads(raw)
    kinds = {detail.get("@type", "").rsplit("/", 1)[-1]: detail for detail in error["details"]}
    assert isinstance(error["code"], int) and error["message"]
    assert (
        kinds["google.rpc.ErrorInfo"]["domain"] == "etax"
        and kinds["google.rpc.ErrorInfo"]["reason"]
    )
    assert kinds["google.rpc.LocalizedMessage"]["locale"] == "zh-CN"
