"""Auth service settings (ETAX_AUTH_*)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from etax_platform import topology
from etax_platform.keyrings import HmacKeyring
from etax_platform.settings import ServiceSettings, keyring_setting


class AuthSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix=topology.service("auth").env_prefix, extra="ignore", frozen=True
    )

    port: int = Field(default=topology.service("auth").port, ge=0, le=65535)
    metrics_port: int = Field(default=topology.service("auth").metrics_port, ge=0, le=65535)
    # The services auth calls (gRPC targets: host:port, or the replicas' addresses
    # comma-separated) and the deadline of each call.
    sms_target: str = topology.default_target("auth", "sms_target")
    face_target: str = topology.default_target("auth", "face_target")
    binding_target: str = topology.default_target("auth", "binding_target")
    call_timeout_seconds: float = Field(default=5.0, gt=0)
    # B1: how long a started registration waits for its face and code steps.
    registration_ttl_seconds: int = Field(default=1800, ge=60)
    # Argon2id runs in a pool of its own; one thread per core uses every core and bounds
    # the memory (19 MiB per hash in flight).
    hash_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)

    # Sessions: short-lived access tokens, refresh tokens rotated on use.
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=3600)
    refresh_token_ttl_seconds: int = Field(default=43200, ge=300)
    # Between login step 1 and step 2; forgot password, phone recovery, self-unlock.
    login_challenge_ttl_seconds: int = Field(default=300, ge=60)
    recovery_ttl_seconds: int = Field(default=600, ge=60)
    # D3: how long a QR-login ticket waits for the APP (and then for the web page).
    qr_login_ttl_seconds: int = Field(default=120, ge=10)
    # D3: the HMAC keys QR-login codes are signed with ("q1:<base64, 32 bytes>,q2:..."),
    # and the one that signs now; the others still verify codes made before a rotation
    # (keep one for qr_login_ttl_seconds after it stops signing). A key of its own, not
    # the PII blind-index key. Development generates one under data_dir.
    qr_keys: SecretStr | None = None
    qr_active_key_id: str = "q1"

    # Signing keys: a new key is published this long before it signs (at least the
    # gateway's JWKS cache, ETAX_GATEWAY_JWKS_CACHE_SECONDS = 300, plus the reload time).
    key_publish_lead_seconds: int = Field(default=600, ge=0)
    key_rotation_seconds: int = Field(default=7 * 86400, ge=3600)
    # How often a replica rereads the keys (new keys made by other replicas, rotation).
    key_reload_seconds: int = Field(default=60, ge=1)
    # The JWKS file for the gateway's file mode; empty: <data_dir>/jwks.json.
    jwks_file: Path | None = None

    # D7: the old enterprise login works until then (an aware ISO datetime); empty: open.
    legacy_login_closes_at: datetime | None = None

    # Q17: the personal income tax APP (个人所得税 APP) as a trusted token issuer for QR
    # login; empty issuer: not trusted. Its key set inline (JSON) or from a file.
    iit_issuer: str = ""
    iit_audience: str = "etax"
    iit_jwks_json: str = ""
    iit_jwks_file: Path | None = None

    # Audit events outside a transaction are written in batches this often; 0: at once.
    audit_batch_seconds: float = Field(default=0.05, ge=0, le=10)

    @field_validator("legacy_login_closes_at", "jwks_file", "iit_jwks_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("legacy_login_closes_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give the closing time with its offset, e.g. 2027-01-01T00:00+08:00")
        return value

    @model_validator(mode="after")
    def _trusted_issuer_has_keys(self) -> AuthSettings:
        if self.iit_issuer and not (self.iit_jwks_json or self.iit_jwks_file):
            raise ValueError("ETAX_AUTH_IIT_ISSUER needs ETAX_AUTH_IIT_JWKS_JSON or _FILE")
        return self

    @model_validator(mode="after")
    def _keys(self) -> AuthSettings:
        self.platform.require_index_key()
        if self.qr_keys is None:
            if self.platform.environment == "production":
                raise ValueError("production needs ETAX_AUTH_QR_KEYS")
        else:
            self.qr_keyring()  # raises ValueError saying what is wrong
        return self

    def qr_keyring(self) -> HmacKeyring:
        return keyring_setting(
            self.qr_keys, self.qr_active_key_id, self.platform.data_dir, "auth-qr-keys"
        )

    def jwks_path(self) -> Path:
        return self.jwks_file or self.platform.data_dir / "jwks.json"
