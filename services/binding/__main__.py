"""`python -m services.binding`: the binding service on ETAX_BINDING_PORT (see the topology)."""

from __future__ import annotations

from etax_platform.observability import start_process
from services.binding.app import build
from services.binding.settings import BindingSettings


def main() -> None:
    settings = BindingSettings()
    stop = start_process(settings, "binding")
    try:
        build(settings).serve_until_signalled()
    finally:
        stop()


if __name__ == "__main__":
    main()
