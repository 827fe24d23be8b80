"""The binding host: health, reflection, tokens, a failing auth, settings, schema, and
`python -m services.binding` itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from etax.binding.v1 import binding_pb2 as pb
from etax.common.v1.types_pb2 import Role

from etax_platform.db import Database
from etax_platform.errors import Reason
from etax_platform.settings import REPO_ROOT
from etax_platform.tokens import AccessClaims, SigningKey, TokenIssuer
from services.binding.app import INTERNAL_SERVICE, MIGRATIONS, PUBLIC_SERVICE
from services.binding.models import metadata
from services.binding.settings import BindingSettings
from tests.binding.support import Binding, expect, rpc_error
from tests.harness.grpc_checks import SERVING, health_status, reflected_services
from tests.harness.numbers import uscc
from tests.harness.servers import free_port


def test_host_is_serving_and_reflects_both_binding_services(binding: Binding) -> None:
    with grpc.insecure_channel(binding.host.address) as channel:
        for service in ("", PUBLIC_SERVICE, INTERNAL_SERVICE):
            assert health_status(channel, service) == SERVING
        assert {PUBLIC_SERVICE, INTERNAL_SERVICE} <= reflected_services(channel)
    assert PUBLIC_SERVICE == "etax.binding.v1.BindingService"
    assert INTERNAL_SERVICE == "etax.binding.v1.InternalBindingService"


def test_public_rpcs_need_a_valid_access_token(binding: Binding) -> None:
    person = binding.person("张三丰")
    request = pb.ListMyPendingConfirmationsRequest()
    code, error = rpc_error(lambda: binding.public.ListMyPendingConfirmations(request, timeout=10))
    assert (code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, Reason.UNAUTHENTICATED)

    claims = AccessClaims(
        person_id=person.person_id, session_id="s", entry=1, province="37", real_name_level=4
    )
    forged, _ = TokenIssuer(SigningKey.generate(), binding.clock).issue(claims)
    expect(
        lambda: binding.public.ListMyPendingConfirmations(
            request, metadata=(("authorization", f"Bearer {forged}"),), timeout=10
        ),
        Reason.UNAUTHENTICATED,
    )
    token = binding.token(person)
    assert list(binding.public.ListMyPendingConfirmations(request, metadata=token).relations) == []
    binding.clock.advance(timedelta(hours=1))
    expect(
        lambda: binding.public.ListMyPendingConfirmations(request, metadata=token, timeout=10),
        Reason.UNAUTHENTICATED,
    )


def test_a_person_document_is_asked_from_auth_once(binding: Binding) -> None:
    person = binding.person("张三丰")
    for _ in range(3):
        binding.pending(person)
        binding.identities(person)
    assert binding.auth.calls["GetPerson"] == 1


def test_auth_unavailable_is_unavailable_and_records_nothing(binding: Binding) -> None:
    lr = binding.person("张建国")
    code = uscc(400)
    binding.bound_enterprise(code, lr)
    newcomer, applicant = binding.person("小明"), binding.person("王申请")
    binding.auth.stop()

    status, error = rpc_error(lambda: binding.apply(code, applicant))
    assert (status, error.reason) == (grpc.StatusCode.UNAVAILABLE, Reason.PROVIDER_UNAVAILABLE)
    assert error.metadata["dependency"] == "auth"
    status, error = rpc_error(lambda: binding.check_enterprise(newcomer, code))
    assert status == grpc.StatusCode.UNAVAILABLE
    assert [r.role for r in binding.enterprise_relations(code, lr)] == [
        Role.ROLE_LEGAL_REPRESENTATIVE
    ]
    # Whether an added person is registered is only shown when auth can say it.
    added = binding.add(code, lr, newcomer)
    assert (added.state, added.person_id) == (pb.RELATION_STATE_PENDING, "")


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = BindingSettings()
    assert (defaults.port, defaults.auth_target) == (50052, "127.0.0.1:50051")
    monkeypatch.setenv("ETAX_BINDING_PORT", "6100")
    monkeypatch.setenv("ETAX_BINDING_AUTH_TARGET", "auth:50051")
    configured = BindingSettings()
    assert (configured.port, configured.auth_target) == (6100, "auth:50051")


def test_migrations_build_exactly_the_models(database_url: str) -> None:
    database = Database(database_url)
    try:
        database.migrate(MIGRATIONS)
        database.migrate(MIGRATIONS)  # a second start changes nothing
        with database.engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), metadata)
        assert differences == []
    finally:
        database.dispose()


def test_python_m_services_binding_serves_until_terminated(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ETAX_BINDING_PORT": str(port),
        "ETAX_BINDING_METRICS_PORT": "0",
        "ETAX_DATA_DIR": str(tmp_path),
        "ETAX_BINDING_AUTH_TARGET": f"127.0.0.1:{free_port()}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.binding"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            deadline = time.monotonic() + 30
            while True:
                try:
                    status = health_status(channel, PUBLIC_SERVICE)
                    break
                except grpc.RpcError:
                    assert process.poll() is None, process.stderr.read() if process.stderr else ""
                    assert time.monotonic() < deadline, "binding did not start"
                    time.sleep(0.1)
            assert status == SERVING
            assert {PUBLIC_SERVICE, INTERNAL_SERVICE} <= reflected_services(channel)
        assert (tmp_path / "binding.sqlite3").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
