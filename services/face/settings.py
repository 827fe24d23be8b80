"""Settings of the face-verification broker (environment prefix ETAX_FACE_)."""

from __future__ import annotations

import base64
import os
from datetime import timedelta
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from etax_platform import topology
from etax_platform.settings import ServiceSettings, development_secret


class FaceSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix=topology.service("face").env_prefix, extra="ignore", frozen=True
    )

    port: int = Field(default=topology.service("face").port, ge=0, le=65535)
    metrics_port: int = Field(default=topology.service("face").metrics_port, ge=0, le=65535)
    # HMAC key for QR payloads and proofs; development generates one under data_dir.
    secret: SecretStr | None = None
    # How long a QR code can be scanned and used, and how long a passed result can be
    # redeemed (both from the injected clock).
    ticket_ttl_seconds: float = Field(default=120, gt=0, le=3600)
    proof_ttl_seconds: float = Field(default=120, gt=0, le=3600)
    # B7: mismatches before the ticket fails and the user is sent to the hall.
    max_mismatches: int = Field(default=3, ge=1, le=10)
    # A capture being verified blocks another one on the same ticket for at most this long
    # (longer than any provider call, so a crashed replica cannot block a ticket for good).
    capture_hold_seconds: float = Field(default=30, gt=0)
    # How often a WatchTicket stream looks at the store (see servicer / service docs).
    watch_poll_seconds: float = Field(default=0.2, gt=0, le=5)
    # Open watches of one ticket in this process (a page and a reload or two); the next
    # is RESOURCE_EXHAUSTED. All watches of the process: ETAX_FACE_MAX_STREAMS.
    max_watchers_per_ticket: int = Field(default=4, ge=1, le=1000)

    provider: Literal["simulator", "http"] = "simulator"
    # Simulator: how long a capture starting with b"slow" takes.
    simulator_slow_seconds: float = Field(default=3.0, ge=0)
    # HTTP provider.
    provider_url: str = ""
    provider_key: SecretStr | None = None
    # Overall deadline of one provider call, retries included.
    provider_deadline_seconds: float = Field(default=5.0, gt=0)
    provider_attempts: int = Field(default=3, ge=1, le=10)
    provider_backoff_seconds: float = Field(default=0.2, ge=0)
    provider_backoff_max_seconds: float = Field(default=2.0, ge=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> FaceSettings:
        if self.provider == "http" and (not self.provider_url or self.provider_key is None):
            raise ValueError("the http provider needs ETAX_FACE_PROVIDER_URL and _PROVIDER_KEY")
        if self.platform.environment == "production":
            if self.secret is None:
                raise ValueError("production needs ETAX_FACE_SECRET")
            if self.provider != "http":
                raise ValueError("production needs the http face provider")
        if self.secret is not None and len(self.secret.get_secret_value()) < 32:
            raise ValueError("ETAX_FACE_SECRET must have at least 32 characters")
        return self

    @property
    def ticket_ttl(self) -> timedelta:
        return timedelta(seconds=self.ticket_ttl_seconds)

    @property
    def proof_ttl(self) -> timedelta:
        return timedelta(seconds=self.proof_ttl_seconds)

    @property
    def capture_hold(self) -> timedelta:
        return timedelta(seconds=self.capture_hold_seconds)

    def signing_secret(self) -> bytes:
        if self.secret is not None:
            return self.secret.get_secret_value().encode()
        stored = development_secret(
            self.platform.data_dir,
            "face-secret",
            lambda: {"key": base64.b64encode(os.urandom(32)).decode()},
        )
        return base64.b64decode(stored["key"])
