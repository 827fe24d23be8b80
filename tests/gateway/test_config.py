"""The rendered gateway configuration: route policy, settings from the environment, and
`envoy --mode validate` on every variant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etax_platform import gateway
from etax_platform.certs import CertificatePaths
from etax_platform.gateway import GatewaySettings, policies_of, validate, write_config
from etax_platform.gateway.config import _load_descriptor_set
from etax_platform.gateway.routes import internal_routes, public_routes
from etax_platform.policy import Access, FloodGuard, RpcPolicy
from etax_platform.tokens import SigningKey

JWT = "envoy.filters.http.jwt_authn"
FLOOD_GUARD = "envoy.filters.http.local_ratelimit"


@pytest.fixture(scope="module")
def policies() -> list[RpcPolicy]:
    return policies_of(_load_descriptor_set(GatewaySettings().descriptor))


def _settings(certs: CertificatePaths, tmp_path: Path, **overrides: object) -> GatewaySettings:
    return GatewaySettings(certs_dir=certs.directory, output_dir=tmp_path, **overrides)  # type: ignore[arg-type]


def test_every_public_rpc_has_a_route_with_the_policy_of_its_contract(
    policies: list[RpcPolicy], gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    """The gateway's routes, jwt rules and flood guards are the contract's options."""
    routes = {r["name"]: r for r in public_routes(_settings(gateway_certs, tmp_path), policies)}
    public = {p.full_name: p for p in policies if p.public}
    assert set(routes) == set(public)
    for name, route in routes.items():
        per_filter = route.get("typed_per_filter_config", {})
        requirement = per_filter.get(JWT, {}).get("requirement_name")
        expected = {
            Access.ANONYMOUS: None,
            Access.SESSION: "session",
            Access.TRUSTED_APP_SESSION: "trusted_app_session",
        }[public[name].access]
        assert requirement == expected, name
        assert (FLOOD_GUARD in per_filter) == (public[name].flood_guard is not FloodGuard.NONE)
    # What a client relies on, spelled out.
    sessions = {p.full_name for p in policies if p.access is Access.SESSION}
    anonymous = {p.full_name for p in policies if p.access is Access.ANONYMOUS}
    assert {
        "etax.auth.v1.AuthService/SwitchIdentity",
        "etax.auth.v1.AccountService/GetProfile",
        "etax.binding.v1.BindingService/ListMyIdentities",
        "etax.binding.v1.BindingService/ApplyForAuthorization",
    } <= sessions
    assert {
        "etax.auth.v1.AuthService/StartLogin",
        "etax.auth.v1.AuthService/GetPublicKeys",
        "etax.auth.v1.AccountService/StartRegistration",
        "etax.sms.v1.SmsService/SendCode",
        "etax.face.v1.FaceService/ScanTicket",
        # By refresh token alone, as RFC 7009 revokes (a valid access token also works).
        "etax.auth.v1.AuthService/Logout",
    } <= anonymous
    assert public["etax.auth.v1.AuthService/ConfirmQrLogin"].access is Access.TRUSTED_APP_SESSION


def test_flood_guards_count_per_client_address_and_per_app(
    policies: list[RpcPolicy], gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    settings = _settings(gateway_certs, tmp_path, login_rate_per_second=7, login_burst=9)
    routes = {r["name"]: r for r in public_routes(settings, policies)}
    guard = routes["etax.auth.v1.AuthService/StartLogin"]["typed_per_filter_config"][FLOOD_GUARD]
    per_client, per_app = guard["descriptors"]
    assert per_client["entries"] == [{"key": "remote_address", "value": ""}]
    assert per_client["token_bucket"] == {
        "max_tokens": 9,
        "tokens_per_fill": 7,
        "fill_interval": "1s",
    }
    assert per_app["entries"] == [{"key": "app", "value": ""}]
    assert guard["always_consume_default_token_bucket"] is False


def test_no_internal_rpc_on_the_public_listener(
    policies: list[RpcPolicy], gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    routes = public_routes(_settings(gateway_certs, tmp_path), policies)
    internal_paths = {p.path for p in policies if p.access is Access.INTERNAL}
    assert internal_paths
    assert not internal_paths & {r["match"]["path"] for r in routes}
    internal = {r["name"] for r in internal_routes(_settings(gateway_certs, tmp_path), policies)}
    assert {p.service for p in policies} <= internal


def test_an_rpc_without_a_policy_is_refused(tmp_path: Path) -> None:
    """The contract must say who may call every RPC: the gateway will not guess."""
    files = _load_descriptor_set(GatewaySettings().descriptor)
    for file in files.file:
        if file.package == "etax.sms.v1":
            file.service[0].method[0].options.Clear()
    with pytest.raises(ValueError, match=r"etax\.sms\.v1\.SmsService/SendCode"):
        policies_of(files)


def test_streaming_routes_have_no_route_timeout_and_a_cluster_of_their_own(
    policies: list[RpcPolicy], gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    settings = _settings(gateway_certs, tmp_path, route_timeout_seconds=3)
    for routes in (public_routes(settings, policies), internal_routes(settings, policies)):
        by_name = {r["name"]: r["route"] for r in routes}
        assert by_name["etax.face.v1.FaceService/WatchTicket"]["timeout"] == "0s"
    public = {r["name"]: r["route"] for r in public_routes(settings, policies)}
    assert public["etax.face.v1.FaceService/GetTicket"]["timeout"] == "3s"
    assert public["etax.face.v1.FaceService/WatchTicket"]["cluster"] == "face.WatchTicket"
    assert public["etax.face.v1.FaceService/GetTicket"]["cluster"] == "face"


def test_replicas_a_retry_goes_to_another_and_a_refusing_one_leaves_at_once(
    policies: list[RpcPolicy], gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    """Only what never reached a service is retried, on another replica; a replica that
    refuses connections is ejected at its first refusal (answers never eject one).
    tests/load/test_national.py kills a replica under load to show it."""
    settings = _settings(gateway_certs, tmp_path, auth_address="127.0.0.1:50051,127.0.0.1:50151")
    for routes in (public_routes(settings, policies), internal_routes(settings, policies)):
        for route in routes:
            retry = route["route"]["retry_policy"]
            assert retry["retry_on"] == "connect-failure,refused-stream"
            (predicate,) = retry["retry_host_predicate"]
            assert predicate["name"] == "envoy.retry_host_predicates.previous_hosts"
    config = gateway.config._clusters(settings, policies)
    (auth,) = [c for c in config if c["name"] == "auth"]
    assert len(auth["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2
    outliers = auth["outlier_detection"]
    assert outliers["consecutive_local_origin_failure"] == 1
    assert outliers["split_external_local_origin_errors"] is True
    assert outliers["enforcing_consecutive_5xx"] == outliers["enforcing_success_rate"] == 0


def test_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    monkeypatch.setenv("ETAX_GATEWAY_PUBLIC_PORT", "18080")
    monkeypatch.setenv("ETAX_GATEWAY_AUTH_ADDRESS", "127.0.0.1:60051,127.0.0.1:60061")
    monkeypatch.setenv("ETAX_GATEWAY_PROVINCE", "11")
    settings = GatewaySettings(certs_dir=gateway_certs.directory, output_dir=tmp_path)
    assert (settings.public_port, settings.province, settings.effective_base_id) == (
        18080,
        "11",
        11,
    )
    assert settings.effective_jwks_url == "http://127.0.0.1:18080/v1/auth/keys"
    text = write_config(settings).read_text()
    assert '"port_value": 60061' in text  # both auth replicas
    assert "port_value: 18080" in text


def test_defaults_are_those_of_the_design() -> None:
    settings = GatewaySettings()
    assert (settings.public_port, settings.internal_port, settings.admin_port) == (8080, 8443, 9901)
    assert [settings.upstream(n) for n in ("auth", "binding", "sms", "face")] == [
        "127.0.0.1:50051",
        "127.0.0.1:50052",
        "127.0.0.1:50053",
        "127.0.0.1:50054",
    ]


def test_profile_of_a_second_province_has_its_own_ports_and_base_id() -> None:
    (profile,) = [p for p in gateway.profiles() if p.name == "province-11.env"]
    second = gateway.load_settings(profile)
    first = GatewaySettings()
    assert second.province == "11"
    assert second.effective_base_id != first.effective_base_id
    assert {second.public_port, second.internal_port, second.admin_port}.isdisjoint(
        {first.public_port, first.internal_port, first.admin_port}
    )


def test_bad_upstream_address_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="host:port"):
        GatewaySettings(sms_address="127.0.0.1")


@pytest.mark.parametrize("source", ["remote", "file"])
def test_rendered_config_passes_envoy_validate(
    gateway_certs: CertificatePaths, tmp_path: Path, source: str
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [SigningKey.generate().public_jwk()]}))
    settings = _settings(gateway_certs, tmp_path, jwks_source=source, jwks_file=jwks)
    validate(write_config(settings))


def test_envoy_validate_catches_a_broken_config(
    gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    config = write_config(_settings(gateway_certs, tmp_path))
    config.write_text(config.read_text().replace("LEAST_REQUEST", "FASTEST_PLEASE"))
    with pytest.raises(RuntimeError, match="validate failed"):
        validate(config)


def test_transcoder_descriptor_knows_the_error_detail_types(tmp_path: Path) -> None:
    merged = gateway.gateway_descriptor_set(GatewaySettings().descriptor)
    names = [f.name for f in merged.file]
    assert "google/rpc/error_details.proto" in names
    assert "google/rpc/status.proto" in names
    # Dependencies first: the order Envoy builds them in.
    for position, file in enumerate(merged.file):
        assert set(file.dependency) <= set(names[:position]), file.name
