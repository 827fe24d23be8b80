"""The auth service as a host and as a process; its settings, schema and signing keys."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from etax_platform.clock import ManualClock
from etax_platform.db import Database
from etax_platform.pii import PersonalData
from etax_platform.settings import PlatformSettings
from services.auth.app import ACCOUNT_SERVICE, AUTH_SERVICE, INTERNAL_AUTH_SERVICE, MIGRATIONS
from services.auth.keys import SigningKeys
from services.auth.models import metadata, signing_keys
from services.auth.settings import AuthSettings
from tests.auth.conftest import Auth
from tests.harness.grpc_checks import SERVING, health_status, reflected_services
from tests.harness.processes import ServiceProcess

SERVICES = {AUTH_SERVICE, ACCOUNT_SERVICE, INTERNAL_AUTH_SERVICE}


def test_built_host_is_serving_and_reflects_its_services(auth: Auth) -> None:
    assert {
        "etax.auth.v1.AuthService",
        "etax.auth.v1.AccountService",
        "etax.auth.v1.InternalAuthService",
    } == SERVICES
    with grpc.insecure_channel(auth.host.address) as channel:
        for name in ("", *SERVICES):
            assert health_status(channel, name) == SERVING
        assert reflected_services(channel) >= SERVICES


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = AuthSettings()
    assert defaults.port == 50051
    assert (defaults.sms_target, defaults.face_target, defaults.binding_target) == (
        "127.0.0.1:50053",
        "127.0.0.1:50054",
        "127.0.0.1:50052",
    )
    assert defaults.hash_workers >= 1
    monkeypatch.setenv("ETAX_AUTH_SMS_TARGET", "sms.internal:443")
    monkeypatch.setenv("ETAX_AUTH_HASH_WORKERS", "3")
    configured = AuthSettings()
    assert (configured.sms_target, configured.hash_workers) == ("sms.internal:443", 3)


def test_python_m_services_auth_serves_until_sigterm(tmp_path: Path) -> None:
    process = ServiceProcess(
        "auth",
        {"ETAX_DATA_DIR": str(tmp_path), "ETAX_KV_URL": "memory://"},
        tmp_path / "auth.log",
    )
    try:
        process.wait_serving()
        with grpc.insecure_channel(process.address) as channel:
            for name in ("", *SERVICES):
                assert health_status(channel, name) == SERVING
            assert reflected_services(channel) >= SERVICES
    finally:
        assert process.terminate() == 0, process.log()
    assert "Traceback" not in process.log()
    assert (tmp_path / "auth.sqlite3").exists()
    # The gateway's file mode reads the published keys from <data_dir>/jwks.json.
    assert json.loads((tmp_path / "jwks.json").read_text())["keys"][0]["crv"] == "Ed25519"


def test_migrations_match_the_models(database_url: str) -> None:
    database = Database(database_url)
    try:
        database.migrate(MIGRATIONS)
        with database.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        database.dispose()


def test_signing_key_is_created_once_sealed_and_kept(
    database_url: str, personal_data: PersonalData
) -> None:
    database = Database(database_url)
    try:
        database.migrate(MIGRATIONS)
        clock = ManualClock()
        first = SigningKeys(database, personal_data, clock)
        first.ensure()
        again = SigningKeys(database, personal_data, clock)
        again.ensure()
        assert again.current().kid == first.current().kid
        assert [k["kid"] for k in again.public_jwks()] == [first.current().kid]
        with database.reading() as session:
            stored = session.scalar(select(signing_keys.c.private_key))
        assert stored is not None and "PRIVATE KEY" not in stored
    finally:
        database.dispose()


def test_development_keys_come_from_the_data_dir(tmp_path: Path) -> None:
    settings = AuthSettings(port=0, platform=PlatformSettings(data_dir=tmp_path))
    assert settings.database_url_for("auth") == f"sqlite:///{tmp_path / 'auth.sqlite3'}"


def test_login_settings_are_checked_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = AuthSettings()
    assert (defaults.access_token_ttl_seconds, defaults.refresh_token_ttl_seconds) == (900, 43200)
    assert defaults.legacy_login_closes_at is None  # D7: open until a date is configured
    monkeypatch.setenv("ETAX_AUTH_LEGACY_LOGIN_CLOSES_AT", "2027-01-01T00:00:00+08:00")
    closes = AuthSettings().legacy_login_closes_at
    assert closes is not None and closes.utcoffset() is not None
    monkeypatch.setenv("ETAX_AUTH_LEGACY_LOGIN_CLOSES_AT", "")
    assert AuthSettings().legacy_login_closes_at is None
    monkeypatch.setenv("ETAX_AUTH_LEGACY_LOGIN_CLOSES_AT", "2027-01-01T00:00:00")
    with pytest.raises(ValueError, match="offset"):
        AuthSettings()
    monkeypatch.delenv("ETAX_AUTH_LEGACY_LOGIN_CLOSES_AT")
    monkeypatch.setenv("ETAX_AUTH_IIT_ISSUER", "iit")
    with pytest.raises(ValueError, match="IIT_JWKS"):
        AuthSettings()
