"""The Envoy gateway: renders its configuration from the settings and the contract, and
runs the `envoy` binary.

- `settings`: GatewaySettings (ETAX_GATEWAY_*), profiles of other provinces.
- `routes`: the route tables, generated from each RPC's policy in the protos.
- `replies`: the errors the gateway makes itself, in the services' JSON shape.
- `config`: the whole configuration from `deploy/envoy/envoy.yaml.tmpl`.
- `envoy`: validating, starting, draining and stopping Envoy.
- `__main__`: `python -m etax_platform.gateway render|validate|run`.
"""

from etax_platform.gateway.config import (
    GATEWAY_HEADERS,
    JWT_PAYLOAD_HEADER,
    UPSTREAMS,
    gateway_descriptor_set,
    policies_of,
    render,
    write_config,
)
from etax_platform.gateway.envoy import EnvoyProcess, envoy_binary, running_gateway, validate
from etax_platform.gateway.routes import APP_ID_HEADER
from etax_platform.gateway.settings import PROFILES, GatewaySettings, load_settings, profiles

__all__ = [
    "APP_ID_HEADER",
    "GATEWAY_HEADERS",
    "JWT_PAYLOAD_HEADER",
    "PROFILES",
    "UPSTREAMS",
    "EnvoyProcess",
    "GatewaySettings",
    "envoy_binary",
    "gateway_descriptor_set",
    "load_settings",
    "policies_of",
    "profiles",
    "render",
    "running_gateway",
    "validate",
    "write_config",
]
