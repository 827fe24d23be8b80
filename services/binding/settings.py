"""Settings of the binding service (environment prefix ETAX_BINDING_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from etax_platform.settings import ServiceSettings


class BindingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ETAX_BINDING_", extra="ignore", frozen=True)

    port: int = Field(default=50052, ge=0, le=65535)
    metrics_port: int = Field(default=9152, ge=0, le=65535)
    # Auth: persons' documents (InternalAuthService) and the token keys (AuthService).
    auth_target: str = "127.0.0.1:50051"
    auth_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
