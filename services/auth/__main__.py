"""python -m services.auth: the auth service, until SIGTERM."""

from __future__ import annotations

from etax_platform.observability import configure_logging
from services.auth.app import build
from services.auth.settings import AuthSettings


def main() -> None:
    settings = AuthSettings()
    configure_logging(settings.platform.log_level, "auth")
    build(settings).serve_until_signalled()


if __name__ == "__main__":
    main()
