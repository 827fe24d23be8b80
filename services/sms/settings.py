"""SMS service settings (ETAX_SMS_*)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from etax_platform import topology
from etax_platform.settings import ServiceSettings


class SmsSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix=topology.service("sms").env_prefix, extra="ignore", frozen=True
    )

    port: int = Field(default=topology.service("sms").port, ge=0, le=65535)
    metrics_port: int = Field(default=topology.service("sms").metrics_port, ge=0, le=65535)
    # E2: at most `throttle_limit` sends per recipient in a window of `throttle_window_seconds`
    # that starts at the first of them.
    throttle_limit: int = Field(default=5, ge=1)
    throttle_window_seconds: int = Field(default=600, ge=1)
    code_ttl_seconds: int = Field(default=300, ge=30)
    max_verify_attempts: int = Field(default=5, ge=1)
    # "outbox": messages are kept for the development outbox; "http": a generic provider.
    provider: Literal["outbox", "http"] = "outbox"
    # Registers SmsOutboxService, which shows codes: development and tests only.
    outbox_enabled: bool = False
    http_url: str = ""
    http_secret: SecretStr | None = None
    http_timeout_seconds: float = Field(default=3.0, gt=0)
    http_attempts: int = Field(default=3, ge=1, le=10)
    # The delivery log is written in batches off the request path; 0: at once.
    delivery_log_batch_seconds: float = Field(default=0.05, ge=0, le=10)

    @model_validator(mode="after")
    def _provider_is_complete(self) -> SmsSettings:
        self.platform.require_index_key()  # recipients and codes are found by blind index
        if self.provider == "http" and (not self.http_url or self.http_secret is None):
            raise ValueError("the http provider needs ETAX_SMS_HTTP_URL and ETAX_SMS_HTTP_SECRET")
        if self.platform.environment == "production" and (
            self.provider == "outbox" or self.outbox_enabled
        ):
            raise ValueError("production must not keep codes in the development outbox")
        return self
