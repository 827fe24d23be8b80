"""Settings of the binding service (environment prefix ETAX_BINDING_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from etax_platform import topology
from etax_platform.settings import ServiceSettings


class BindingSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix=topology.service("binding").env_prefix, extra="ignore", frozen=True
    )

    port: int = Field(default=topology.service("binding").port, ge=0, le=65535)
    # Auth: persons' documents (InternalAuthService) and the token keys (AuthService);
    # host:port, or the replicas' addresses comma-separated.
    auth_target: str = topology.default_target("binding", "auth_target")
    auth_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
