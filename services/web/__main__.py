"""python -m services.web: the web login pages, until SIGTERM / Ctrl-C."""

from __future__ import annotations

import uvicorn

from etax_platform.observability import configure_logging
from services.web.app import build, server_config
from services.web.settings import WebSettings


def main() -> None:
    settings = WebSettings()
    configure_logging(settings.platform.log_level, "web")
    uvicorn.Server(server_config(settings, build(settings))).run()


if __name__ == "__main__":
    main()
