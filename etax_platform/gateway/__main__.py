"""The gateway's command line (what `make run` and `make lint` call):

python -m etax_platform.gateway render   [--env-file F]   # writes the config
python -m etax_platform.gateway validate [--env-file F]   # envoy --mode validate
python -m etax_platform.gateway run      [--env-file F]   # until SIGTERM / SIGINT
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Literal

from etax_platform.gateway.config import write_config
from etax_platform.gateway.envoy import EnvoyProcess, validate
from etax_platform.gateway.settings import GatewaySettings, load_settings, profiles
from etax_platform.settings import REPO_ROOT
from etax_platform.tokens import SigningKey

log = logging.getLogger("etax.gateway")


def _validate_all(env_files: Sequence[Path]) -> int:
    variants: list[tuple[str, GatewaySettings]] = []
    for env_file in [None, *env_files]:
        settings = load_settings(env_file)
        label = str(env_file.relative_to(REPO_ROOT)) if env_file else "environment"
        variants.append((label, settings))
        other: Literal["remote", "file"] = "file" if settings.jwks_source == "remote" else "remote"
        variants.append(
            (f"{label}, jwks {other}", settings.model_copy(update={"jwks_source": other}))
        )
    failed = 0
    for label, settings in variants:
        directory = settings.output_dir / "validate" / f"{settings.name}-{settings.jwks_source}"
        if settings.jwks_source == "file" and not settings.jwks_file.exists():
            # Validation reads the file and wants a key in it: a throwaway one stands in.
            jwks = directory / "jwks.json"
            directory.mkdir(parents=True, exist_ok=True)
            jwks.write_text(json.dumps({"keys": [SigningKey.generate().public_jwk()]}))
            settings = settings.model_copy(update={"jwks_file": jwks})  # noqa: PLW2901
        config = write_config(settings, directory)
        try:
            validate(config)
        except RuntimeError as error:
            failed += 1
            print(error, file=sys.stderr)
        else:
            print(f"envoy validate OK: {label} ({config.relative_to(REPO_ROOT)})")
    return 1 if failed else 0


def _run(settings: GatewaySettings) -> int:
    config = write_config(settings)
    envoy = EnvoyProcess.for_settings(settings, config)
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping envoy", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    envoy.start()
    try:
        envoy.wait_ready()
        log.info(
            "gateway %s: public %s:%d, internal %s:%d (mTLS), admin 127.0.0.1:%d",
            settings.province,
            settings.listen_host,
            settings.public_port,
            settings.listen_host,
            settings.internal_port,
            settings.admin_port,
        )
        while not stopping.wait(0.2):
            if not envoy.running:
                log.error("envoy exited with %s", envoy.process and envoy.process.returncode)
                return 1
    finally:
        envoy.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the e-tax Envoy gateway")
    parser.add_argument("command", choices=["render", "validate", "run"])
    parser.add_argument(
        "--env-file", type=Path, help="a profile, e.g. deploy/envoy/province-11.env"
    )
    parser.add_argument(
        "--profiles", action="store_true", help="validate: also every deploy/envoy/*.env"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "validate":
        env_files = [args.env_file] if args.env_file else []
        return _validate_all(env_files + (profiles() if args.profiles else []))
    settings = load_settings(args.env_file)
    if args.command == "render":
        print(write_config(settings))
        return 0
    return _run(settings)


if __name__ == "__main__":
    sys.exit(main())
