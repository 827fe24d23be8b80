"""Typed settings from environment variables, validated when a service starts.

Every variable starts with ETAX_. Settings all services share live in `PlatformSettings`;
each service adds its own class with its own prefix (ETAX_SMS_, ETAX_AUTH_, ...) derived
from `ServiceSettings`. A bad value stops the service at start with a clear message.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from etax_platform.db import PoolSettings
from etax_platform.keyrings import HmacKeyring
from etax_platform.kv import CLUSTER_SCHEMES, KeyValueStore, check_prefix, cluster_nodes, open_store
from etax_platform.pii import Keyring
from etax_platform.topology import grpc_target

REPO_ROOT = Path(__file__).resolve().parent.parent


class PlatformSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ETAX_", extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"
    # Where the embedded default keeps SQLite files and development secrets.
    data_dir: Path = REPO_ROOT / "var"
    # "memory://" (in-process, one replica), "redis://host:port/db" (standalone) or
    # "redis+cluster://host:port,host:port" (Redis Cluster; any nodes, the rest is found).
    kv_url: str = "memory://"
    # Key prefix in the shared store, so environments can share one Redis.
    kv_prefix: str = "etax:"
    # Production refuses a Redis without an append-only file (lockouts, throttles and
    # revocations must survive its restart); true: allow it, e.g. for a managed Redis
    # whose persistence is set up elsewhere.
    kv_allow_without_aof: bool = False
    # Rows on their way to the database (audit events, delivery records) wait here while
    # it is away; empty: <data_dir>/journal. A local disk (the files are locked).
    journal_dir: Path | None = None
    # "k1:<base64 32 bytes>,k2:<...>"; development generates keys under data_dir.
    pii_keys: SecretStr | None = None
    pii_active_key_id: str = "k1"
    # The blind index of auth's and sms's personal numbers (those services require it in
    # production); binding keeps indexes of its own (ETAX_BINDING_INDEX_KEYS).
    pii_index_key: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Service logs: "json" (JSON lines, for collectors), "text" (for a person at a
    # terminal) or "auto" (text when stderr is a terminal, as under `make run`, else JSON).
    log_format: Literal["json", "text", "auto"] = "auto"
    # Prometheus metrics of every process (an exporter per process, per-RPC metrics in
    # the interceptor); false takes them off the request path (the bench compares).
    metrics_enabled: bool = True
    # OpenTelemetry traces: OTLP/gRPC to this collector (e.g. http://127.0.0.1:4317).
    # Empty (the default): no tracer at all, nothing on the request path.
    otel_endpoint: str = ""
    # How long a service verifying access tokens keeps its copy of auth's published keys
    # before fetching them again (TokenVerifier): the gateway's JWKS cache time
    # (ETAX_GATEWAY_JWKS_CACHE_SECONDS), so a key auth withdraws is dropped as fast here.
    jwks_cache_seconds: float = Field(default=300, gt=0)

    @field_validator("journal_dir", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("kv_url")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value.partition("://")[0] in CLUSTER_SCHEMES:
            cluster_nodes(value)  # raises ValueError saying what is wrong
        elif not value.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError(
                "kv_url must be memory://, redis://host:port/db or "
                "redis+cluster://host:port[,host:port...]"
            )
        return value

    @field_validator("kv_prefix")
    @classmethod
    def _untagged_prefix(cls, value: str) -> str:
        return check_prefix(value)

    @model_validator(mode="after")
    def _production_needs_real_keys(self) -> PlatformSettings:
        if self.environment == "production":
            if self.pii_keys is None:
                raise ValueError("production needs ETAX_PII_KEYS")
            if self.kv_url.startswith("memory://"):
                raise ValueError("production needs a shared store: set ETAX_KV_URL to Redis")
        return self

    def open_store(self) -> KeyValueStore:
        """The key-value store these settings name (the caller closes it); in production
        a Redis without an append-only file is refused (unless allowed)."""
        return open_store(
            self.kv_url,
            prefix=self.kv_prefix,
            require_persistence=self.environment == "production" and not self.kv_allow_without_aof,
        )

    def journal_path(self) -> Path:
        return self.journal_dir or self.data_dir / "journal"

    def keyring(self, *, blind_index: bool = True) -> Keyring:
        """The PII keys; blind_index=False: without the index key, for a service that only
        seals (it then need not be set)."""
        if self.pii_keys is not None:
            if blind_index and self.pii_index_key is None:
                raise ValueError("ETAX_PII_INDEX_KEY is not set")
            return Keyring.parse(
                self.pii_keys.get_secret_value(),
                self.pii_active_key_id,
                self.pii_index_key.get_secret_value()
                if blind_index and self.pii_index_key
                else None,
            )
        stored = development_secret(self.data_dir, "pii-keys", lambda: Keyring.generate().dump())
        keyring = Keyring.parse(stored["keys"], stored["active_key_id"], stored["index_key"])
        return keyring if blind_index else keyring.sealing_only()

    def require_index_key(self) -> None:
        """For the settings of a service that computes blind indexes (auth, sms)."""
        if self.environment == "production" and self.pii_index_key is None:
            raise ValueError("production needs ETAX_PII_INDEX_KEY")


class ServiceSettings(BaseSettings):
    """What every service process needs; subclasses set env_prefix and the port."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    # The process's Prometheus exporter (/metrics); subclasses set the default port, 0
    # lets the system choose one. Replicas on one machine need one each.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Empty: a SQLite file <data_dir>/<service>.sqlite3 (the embedded default).
    database_url: str = ""
    # Threads for unary calls; server streams (WatchTicket) get max_streams threads of
    # their own, and a stream beyond them is RESOURCE_EXHAUSTED.
    max_workers: int = Field(default=64, ge=2, le=1024)
    max_streams: int = Field(default=256, ge=1, le=4096)
    grace_seconds: float = Field(default=5.0, ge=0)
    # Global revocation: how often a process rereads the sessions revoked elsewhere.
    revocation_poll_seconds: float = Field(default=0.25, gt=0, le=1)
    # PostgreSQL connection pool (SQLite keeps its own). Connections kept open:
    db_pool_size: int = Field(default=16, ge=1, le=1024)
    # More opened under load and closed when returned; empty: enough for every RPC
    # worker and a few background threads (max_workers + 8 - db_pool_size).
    db_max_overflow: int | None = Field(default=None, ge=0, le=4096)
    # A call that waits this long for a free connection fails UNAVAILABLE.
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    # Connections older than this are replaced (behind load balancers and poolers).
    db_pool_recycle_seconds: int = Field(default=1800, ge=-1)
    # Sent as the libpq startup option `-c statement_timeout=...`; 0 sends nothing (the
    # server's or the pooler's setting applies: PgBouncer 1.18 refuses startup options).
    db_statement_timeout_ms: int = Field(default=10_000, ge=0)
    # psycopg prepares a statement after 5 runs on a connection. False behind a pooler
    # in transaction mode without prepared-statement support (PgBouncer < 1.21).
    db_prepared_statements: bool = True
    platform: PlatformSettings = Field(default_factory=PlatformSettings)

    @model_validator(mode="after")
    def _targets_are_addresses(self) -> ServiceSettings:
        # Every *_target (the services this one calls): host:port or replicas' addresses.
        for name in type(self).model_fields:
            if name.endswith("_target"):
                try:
                    grpc_target(getattr(self, name))
                except ValueError as error:
                    raise ValueError(f"{name}: {error}") from None
        return self

    def database_pool(self) -> PoolSettings:
        """The PostgreSQL pool these settings describe."""
        overflow = self.db_max_overflow
        if overflow is None:
            overflow = max(0, self.max_workers + 8 - self.db_pool_size)
        return PoolSettings(
            size=self.db_pool_size,
            max_overflow=overflow,
            timeout_seconds=self.db_pool_timeout_seconds,
            recycle_seconds=self.db_pool_recycle_seconds,
            statement_timeout_ms=self.db_statement_timeout_ms,
            prepared_statements=self.db_prepared_statements,
        )

    def database_url_for(self, service: str) -> str:
        if self.database_url:
            return self.database_url
        self.platform.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.platform.data_dir / f'{service}.sqlite3'}"


def development_secret(
    data_dir: Path, name: str, generate: Callable[[], dict[str, str]]
) -> dict[str, str]:
    """A secret generated once and kept under data_dir, for the embedded default only.

    Several services start at once and must agree, so the file is created atomically: the
    first writer wins and everybody reads its content.
    """
    secrets_dir = data_dir / "secrets"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    target = secrets_dir / f"{name}.json"
    if not target.exists():
        fd, temp_path = tempfile.mkstemp(dir=secrets_dir, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(generate(), handle)
            Path(temp_path).chmod(0o600)
            with contextlib.suppress(FileExistsError):
                os.link(temp_path, target)
        finally:
            Path(temp_path).unlink()
    loaded: dict[str, str] = json.loads(target.read_text())
    return loaded


def development_keyring(data_dir: Path, name: str, key_id: str) -> HmacKeyring:
    """An HMAC keyring of one key generated once under data_dir (embedded default only;
    production sets the keys, see etax_platform.keyrings)."""
    stored = development_secret(data_dir, name, lambda: HmacKeyring.generate(key_id).dump())
    return HmacKeyring.parse(stored["keys"], stored["active_key_id"])


def keyring_setting(
    keys: SecretStr | None, active_id: str, data_dir: Path, name: str
) -> HmacKeyring:
    """The keyring a pair of settings (keys, active id) names, or the development one."""
    if keys is not None:
        return HmacKeyring.parse(keys.get_secret_value(), active_id)
    return development_keyring(data_dir, name, active_id)
