"""Auth service settings (ETAX_AUTH_*)."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from etax_platform.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ETAX_AUTH_", extra="ignore", frozen=True)

    port: int = Field(default=50051, ge=0, le=65535)
    # The services auth calls (gRPC targets) and the deadline of each call.
    sms_target: str = "127.0.0.1:50053"
    face_target: str = "127.0.0.1:50054"
    binding_target: str = "127.0.0.1:50052"
    call_timeout_seconds: float = Field(default=5.0, gt=0)
    # B1: how long a started registration waits for its face and code steps.
    registration_ttl_seconds: int = Field(default=1800, ge=60)
    # Argon2id runs in a pool of its own; one thread per core uses every core and bounds
    # the memory (19 MiB per hash in flight).
    hash_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
