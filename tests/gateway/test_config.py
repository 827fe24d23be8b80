"""The rendered gateway configuration: route policy, settings from the environment, and
`envoy --mode validate` on every variant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etax_platform import gateway
from etax_platform.certs import CertificatePaths
from etax_platform.gateway import (
    ANONYMOUS_METHODS,
    PUBLIC_SERVICES,
    RATE_LIMITED_METHODS,
    GatewaySettings,
    internal_routes,
    methods,
    public_routes,
    validate,
    write_config,
)
from etax_platform.tokens import SigningKey


@pytest.fixture(scope="module")
def services() -> dict[str, list[gateway.Method]]:
    return methods(gateway._load_descriptor_set(GatewaySettings().descriptor))


def _settings(certs: CertificatePaths, tmp_path: Path, **overrides: object) -> GatewaySettings:
    return GatewaySettings(certs_dir=certs.directory, output_dir=tmp_path, **overrides)  # type: ignore[arg-type]


def test_policy_tables_name_only_existing_public_methods(
    services: dict[str, list[gateway.Method]],
) -> None:
    """A typo in a table would silently protect or expose the wrong RPC."""
    public = {m.full_name for s in PUBLIC_SERVICES for m in services[s]}
    assert public >= ANONYMOUS_METHODS
    assert set(RATE_LIMITED_METHODS) <= public


def test_every_public_rpc_has_a_route_and_session_rpcs_need_a_token(
    services: dict[str, list[gateway.Method]], gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    routes = {r["name"]: r for r in public_routes(_settings(gateway_certs, tmp_path), services)}
    public = {m.full_name for s in PUBLIC_SERVICES for m in services[s]}
    assert set(routes) == public
    for name, route in routes.items():
        needs_session = "envoy.filters.http.jwt_authn" in route.get("typed_per_filter_config", {})
        assert needs_session == (name not in ANONYMOUS_METHODS), name
    # The brief's list, spelled out.
    for name in [
        "etax.auth.v1.AuthService/Logout",
        "etax.auth.v1.AuthService/SwitchIdentity",
        "etax.auth.v1.AuthService/ConfirmQrLogin",
        "etax.auth.v1.AccountService/GetProfile",
        "etax.binding.v1.BindingService/ListMyIdentities",
    ]:
        assert name not in ANONYMOUS_METHODS
    for name in [
        "etax.auth.v1.AuthService/StartLogin",
        "etax.auth.v1.AuthService/GetPublicKeys",
        "etax.auth.v1.AccountService/StartRegistration",
        "etax.sms.v1.SmsService/SendCode",
        "etax.face.v1.FaceService/ScanTicket",
    ]:
        assert name in ANONYMOUS_METHODS


def test_no_internal_service_on_the_public_listener(
    services: dict[str, list[gateway.Method]], gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    routes = public_routes(_settings(gateway_certs, tmp_path), services)
    assert all(r["match"]["path"].split("/")[1] in PUBLIC_SERVICES for r in routes)
    internal = {r["name"] for r in internal_routes(_settings(gateway_certs, tmp_path), services)}
    assert {
        "etax.auth.v1.InternalAuthService",
        "etax.binding.v1.InternalBindingService",
        "etax.sms.v1.InternalSmsService",
        "etax.face.v1.InternalFaceService",
        *PUBLIC_SERVICES,
    } <= internal


def test_streaming_routes_have_no_route_timeout(
    services: dict[str, list[gateway.Method]], gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    settings = _settings(gateway_certs, tmp_path, route_timeout_seconds=3)
    for routes in (public_routes(settings, services), internal_routes(settings, services)):
        by_name = {r["name"]: r["route"] for r in routes}
        assert by_name["etax.face.v1.FaceService/WatchTicket"]["timeout"] == "0s"
    assert {r["name"]: r for r in public_routes(settings, services)}[
        "etax.face.v1.FaceService/GetTicket"
    ]["route"]["timeout"] == "3s"


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
