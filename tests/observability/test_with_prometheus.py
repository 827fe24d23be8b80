"""Issue 15 with the real thing: FAQ stories played through the gateway against service
processes, then read back from a real Prometheus (counters moved by exactly what was
played, an alert fires), from every exporter (no personal number in any label, the
dashboard reads only metrics that exist) and from the spans they exported (one login, one
trace across gateway, auth, binding and sms)."""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.common.v1 import types_pb2

from etax_platform.settings import REPO_ROOT
from tests.e2e.story import PASSWORD, Person, new_phone, new_uscc
from tests.harness.labels import label_values, looks_personal
from tests.harness.otlp import ReceivedSpan
from tests.observability.conftest import Observed

pytestmark = pytest.mark.slow

REGISTRATION = "VERIFICATION_PURPOSE_REGISTRATION"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "etax-platform.json"


def _total(observed: Observed, expr: str) -> float:
    return observed.prometheus.value(expr) or 0.0


# --- counters -------------------------------------------------------------------------------

# What the stories below play, query by query.
PLAYED = {
    # two registrations (B1): a face check and an SMS code each
    'sum(etax_auth_registrations_total{origin="online",'
    'document_kind="resident_identity_card",level="4"})': 2,
    'sum(etax_face_captures_total{purpose="registration",outcome="pass"})': 2,
    # one login by SMS code, one by scan verification (D2)
    'sum(etax_auth_logins_started_total{entry="natural_person",outcome="ok"})': 2,
    'sum(etax_auth_logins_completed_total{entry="natural_person",step="sms_code",outcome="ok"})': 1,
    'sum(etax_auth_logins_completed_total{entry="natural_person",step="face",outcome="ok"})': 1,
    'sum(etax_face_captures_total{purpose="login",outcome="pass"})': 1,
    "sum(etax_auth_sessions_issued_total)": 2,
    'sum(etax_sms_codes_sent_total{purpose="login",channel="sms"})': 1,
    # five wrong passwords lock the password level (E1)
    'sum(etax_auth_logins_started_total{outcome="failed",reason="CREDENTIALS_INVALID"})': 4,
    'sum(etax_auth_logins_started_total{outcome="failed",reason="AUTH_METHOD_LOCKED"})': 1,
    'sum(etax_auth_locks_total{method="password"})': 1,
    'sum(grpc_server_handled_total{job="auth",grpc_method="StartLogin"})': 7,
    # six sends to one phone: the sixth is throttled (E2); 2 registration codes before
    'sum(etax_sms_codes_sent_total{purpose="registration",channel="sms"})': 7,
    'sum(etax_sms_codes_throttled_total{purpose="registration",channel="sms"})': 1,
    'sum(etax_sms_codes_verified_total{outcome="ok"})': 3,
    # a dark capture (B7: retry with a hint), then the provider busy three times
    'sum(etax_face_captures_total{outcome="poor_image_too_dark"})': 1,
    'sum(etax_face_captures_total{outcome="busy"})': 3,
    'sum(etax_rpc_errors_total{job="face",grpc_method="SubmitCapture",'
    'grpc_code="UNAVAILABLE",reason="FACE_SERVICE_BUSY"})': 3,
}


def play_stories(observed: Observed) -> None:
    bureau = observed.bureau
    first = bureau.register(Person("观测甲"))
    bureau.login(first)
    bureau.login_by_face(first)

    second = bureau.register(Person("观测乙"))
    for attempt in range(5):
        reply = bureau.start_login(second, password="Wrong.pass1")
        assert reply.reason == ("AUTH_METHOD_LOCKED" if attempt == 4 else "CREDENTIALS_INVALID")

    phone = new_phone()
    reasons = [bureau.send_code(phone, REGISTRATION).reason for _ in range(6)]
    assert reasons == [""] * 5 + ["SMS_RATE_LIMITED"]

    third = Person("观测丙")
    started = bureau.start_registration(third)
    face = bureau.web.call(
        "AccountService.StartRegistrationFace", {"registration_id": started["registration_id"]}
    )["face"]
    assert bureau.tax_app.face(face["qr_payload"], "dark").ok
    for _ in range(3):
        assert bureau.tax_app.face(face["qr_payload"], "busy").reason == "FACE_SERVICE_BUSY"


def test_counters_in_prometheus_moved_by_exactly_what_was_played(observed: Observed) -> None:
    before = {expr: _total(observed, expr) for expr in PLAYED}
    play_stories(observed)
    for expr, delta in PLAYED.items():
        observed.prometheus.wait_value(expr, before[expr] + delta)


def test_the_busy_face_provider_fires_its_alert(observed: Observed) -> None:
    """EtaxFaceProviderBusy (deploy/prometheus/rules, its `for:` set to 0s): more than a
    tenth of the captures of the last 5 minutes busy, at least three of them."""
    bureau = observed.bureau
    person = Person("观测丁")
    started = bureau.start_registration(person)
    face = bureau.web.call(
        "AccountService.StartRegistrationFace", {"registration_id": started["registration_id"]}
    )["face"]
    for _ in range(3):
        assert bureau.tax_app.face(face["qr_payload"], "busy").reason == "FACE_SERVICE_BUSY"
    prometheus = observed.prometheus
    prometheus.wait_firing("EtaxFaceProviderBusy")
    # Every process answers its scrapes. (SubmitCapture's error SLO fires as well: a
    # busy provider's answers are UNAVAILABLE to the APP.)
    assert not prometheus.firing("EtaxReplicaDown")
    assert not prometheus.firing("EtaxFaceBreakerOpen")


# --- labels -----------------------------------------------------------------------------------


def scrape(url: str) -> str:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response.text


def test_no_exporter_carries_a_personal_number_or_token_in_a_label(observed: Observed) -> None:
    """After the stories (this module's, and a full set of logins, locks and throttles),
    every process's exporter: each service's own, and Envoy's."""
    play_stories(observed)
    exporters = observed.exporters()
    seen: set[str] = set()
    for name, url in exporters.items():
        text = scrape(url)
        if name != "gateway":
            assert f'etax_service_info{{service="{name}"' in text  # its own exporter
        for sample, label, value in label_values(text):
            assert not looks_personal(value), (name, sample, label, value)
            seen.add(value)
    assert seen  # the scrapes had labels at all
    assert looks_personal("13512345678") and looks_personal(new_uscc())
    assert not looks_personal("etax.auth.v1.AuthService") and not looks_personal(
        "CompleteLoginWithCode"
    )


# --- the dashboard -------------------------------------------------------------------------

_PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "group_left",
    "group_right", "rate", "increase", "irate", "deriv", "histogram_quantile", "and", "or",
    "unless", "offset", "topk", "bottomk", "abs", "clamp_min", "clamp_max", "bool",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {n for n in names if n not in _PROMQL_WORDS and not re.fullmatch(r"\d+\w*", n)}


def _exposed_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
    return names


def test_the_dashboard_reads_only_metrics_that_exist(observed: Observed) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) > 20
    exposed = {"up"}  # Prometheus's own, per target
    for url in observed.exporters().values():
        exposed |= _exposed_names(scrape(url))
    missing = {name for expr in exprs for name in metric_names(expr)} - exposed
    assert not missing, missing
    # And Prometheus itself accepts every expression.
    for expr in exprs:
        observed.prometheus.query(expr)


def test_the_alert_rules_read_only_metrics_that_exist(observed: Observed) -> None:
    rules = (REPO_ROOT / "deploy" / "prometheus" / "rules" / "etax-alerts.yml").read_text()
    exprs = re.findall(r"expr: \|\n((?:      .*\n)+)|expr: (.+)\n", rules)
    texts = [block or line for block, line in exprs]
    assert len(texts) >= 10
    exposed = {"up"}
    for url in observed.exporters().values():
        exposed |= _exposed_names(scrape(url))
    missing = {name for text in texts for name in metric_names(text)} - exposed
    assert not missing, missing


# --- traces ---------------------------------------------------------------------------------


def test_a_login_through_the_gateway_is_one_trace_across_the_services(
    observed: Observed,
) -> None:
    """Enterprise login by SMS code (D1, D2): step 1 asks binding (auth -> binding), the
    code is sent and checked by sms (auth -> sms). The page's traceparent is continued by
    Envoy and by every service: the spans of gateway, auth, binding and sms form one tree
    under it."""
    bureau = observed.bureau
    manager = bureau.register(Person("观测总"))
    code = new_uscc()
    bureau.new_enterprise(code, manager)
    trace_id, root = os.urandom(16).hex(), os.urandom(8).hex()
    metadata = (("traceparent", f"00-{trace_id}-{root}-01"),)
    assert observed.platform.gateway is not None
    with observed.platform.gateway.public_channel() as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        started = auth.StartLogin(
            auth_pb2.StartLoginRequest(
                entry=types_pb2.ENTRY_ENTERPRISE,
                enterprise_code=code,
                account=manager.number,
                password=PASSWORD,
                province=bureau.province,
            ),
            metadata=metadata,
            timeout=20,
        )
        auth.SendLoginCode(
            auth_pb2.SendLoginCodeRequest(challenge_id=started.challenge_id),
            metadata=metadata,
            timeout=20,
        )
        sms_code = bureau.phones.code(manager.phone, purpose="VERIFICATION_PURPOSE_LOGIN")
        auth.CompleteLoginWithCode(
            auth_pb2.CompleteLoginWithCodeRequest(challenge_id=started.challenge_id, code=sms_code),
            metadata=metadata,
            timeout=20,
        )

    def orphans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        """Spans whose parent is neither another span of the trace nor the page's own."""
        ids = {s.span_id for s in spans}
        return [s for s in spans if s.parent_span_id not in ids and s.parent_span_id != root]

    def complete(spans: list[ReceivedSpan]) -> bool:
        ours = [s for s in spans if s.trace_id == trace_id]
        services = {s.service for s in ours}
        names = {s.name for s in ours}
        # Envoy exports every few seconds, the services every half second: until the
        # gateway's spans arrive, the services' server spans have no parent yet.
        return (
            {"gateway", "auth", "binding", "sms"} <= services
            and {
                "etax.auth.v1.AuthService/CompleteLoginWithCode",
                "etax.binding.v1.InternalBindingService/CheckAccess",
                "etax.sms.v1.InternalSmsService/VerifyCode",
            }
            <= names
            and not orphans(ours)
        )

    spans = [s for s in observed.traces.wait_for(complete, timeout=30) if s.trace_id == trace_id]
    assert not orphans(spans)  # one tree
    by_id = {s.span_id: s for s in spans}
    for span in spans:
        if span.service in ("binding", "sms") and span.kind == 2:  # SERVER
            parent = by_id[span.parent_span_id]
            assert parent.service == "auth", (span, parent)  # auth's client span
    assert any(s.service == "gateway" and s.parent_span_id == root for s in spans)
    # Its database statements are in it too (auth's embedded SQLite).
    assert any(s.service == "auth" and s.name.startswith(("SELECT", "INSERT")) for s in spans)
