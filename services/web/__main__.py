"""python -m services.web: the web login pages, until SIGTERM / Ctrl-C."""

from __future__ import annotations

import uvicorn

from etax_platform.observability import start_process
from services.web.app import build, server_config
from services.web.settings import WebSettings


def main() -> None:
    settings = WebSettings()
    stop = start_process(settings, "web")
    try:
        uvicorn.Server(server_config(settings, build(settings))).run()
    finally:
        stop()


if __name__ == "__main__":
    main()
