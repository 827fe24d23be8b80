"""python -m services.auth: the auth service, until SIGTERM."""

from __future__ import annotations

from etax_platform.observability import start_process
from services.auth.app import build
from services.auth.settings import AuthSettings


def main() -> None:
    settings = AuthSettings()
    stop = start_process(settings, "auth")
    try:
        build(settings).serve_until_signalled()
    finally:
        stop()


if __name__ == "__main__":
    main()
