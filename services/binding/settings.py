"""Settings of the binding service (environment prefix ETAX_BINDING_)."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from etax_platform import topology
from etax_platform.keyrings import HmacKeyring
from etax_platform.settings import ServiceSettings, keyring_setting


class BindingSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix=topology.service("binding").env_prefix, extra="ignore", frozen=True
    )

    port: int = Field(default=topology.service("binding").port, ge=0, le=65535)
    metrics_port: int = Field(default=topology.service("binding").metrics_port, ge=0, le=65535)
    # Auth: persons' documents (InternalAuthService) and the token keys (AuthService);
    # host:port, or the replicas' addresses comma-separated.
    auth_target: str = topology.default_target("binding", "auth_target")
    auth_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    # Binding's own blind-index keys for persons' documents ("b1:<base64, 32 bytes>,..."),
    # and the one new rows use; rows under the others are still found until they are moved
    # (python -m services.binding.reindex) and the key dropped. Not auth's PII index key.
    # Development generates one under data_dir.
    index_keys: SecretStr | None = None
    index_active_key_id: str = "b1"

    @model_validator(mode="after")
    def _index_keys(self) -> BindingSettings:
        if self.index_keys is None:
            if self.platform.environment == "production":
                raise ValueError("production needs ETAX_BINDING_INDEX_KEYS")
        else:
            self.index_keyring()  # raises ValueError saying what is wrong
        return self

    def index_keyring(self) -> HmacKeyring:
        return keyring_setting(
            self.index_keys, self.index_active_key_id, self.platform.data_dir, "binding-index-keys"
        )
