"""The face service as a process: health, reflection, settings, `python -m services.face`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from pydantic import ValidationError

from etax_platform.settings import REPO_ROOT, PlatformSettings
from services.face.app import INTERNAL_SERVICE, PUBLIC_SERVICE
from services.face.settings import FaceSettings
from tests.face.conftest import SECRET, Face
from tests.harness.grpc_checks import SERVING, health_status, reflected_services

SERVICES = {"etax.face.v1.FaceService", "etax.face.v1.InternalFaceService"}


def test_built_host_is_serving_and_reflects_its_services(face: Face) -> None:
    assert {PUBLIC_SERVICE, INTERNAL_SERVICE} == SERVICES
    for name in ("", *SERVICES):
        assert health_status(face.channel, name) == SERVING
    assert reflected_services(face.channel) >= SERVICES


def test_default_port_is_50054() -> None:
    assert FaceSettings.model_fields["port"].default == 50054


def test_settings_refuse_an_unsafe_production(tmp_path: Path) -> None:
    production = PlatformSettings(
        environment="production",
        data_dir=tmp_path,
        kv_url="redis://127.0.0.1:1/0",
        pii_keys="k1:" + "A" * 44,
        pii_index_key="B" * 44,
    )
    with pytest.raises(ValidationError, match="ETAX_FACE_SECRET"):
        FaceSettings(
            platform=production, provider="http", provider_url="http://p", provider_key="k"
        )
    with pytest.raises(ValidationError, match="http face provider"):
        FaceSettings(platform=production, secret=SECRET)
    with pytest.raises(ValidationError, match="PROVIDER_URL"):
        FaceSettings(platform=PlatformSettings(data_dir=tmp_path), provider="http")
    with pytest.raises(ValidationError, match="at least 32"):
        FaceSettings(platform=PlatformSettings(data_dir=tmp_path), secret="short")


def test_development_secret_is_generated_once_and_shared(tmp_path: Path) -> None:
    platform = PlatformSettings(data_dir=tmp_path)
    first = FaceSettings(platform=platform).signing_secret()
    assert len(first) == 32
    assert FaceSettings(platform=platform).signing_secret() == first


def test_python_m_services_face_serves_until_sigterm(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ETAX_FACE_PORT": "0",  # never the fixed port in tests
        "ETAX_FACE_METRICS_PORT": "0",
        "ETAX_DATA_DIR": str(tmp_path),
        "ETAX_KV_URL": "memory://",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.face"],
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    address = None
    for line in process.stderr:
        lines.append(line)
        found = re.search(r"serving .* on (127\.0\.0\.1:\d+)", line)
        if found:
            address = found.group(1)
            break
    assert address, "".join(lines)
    rest: list[str] = []
    drain = threading.Thread(target=lambda: rest.extend(process.stderr or []), daemon=True)
    drain.start()
    try:
        with grpc.insecure_channel(address) as channel:
            for name in ("", *SERVICES):
                assert health_status(channel, name) == SERVING
            assert reflected_services(channel) >= SERVICES
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    drain.join(5)
    assert "Traceback" not in "".join(rest)
