"""`python -m services.binding`: the binding service on ETAX_BINDING_PORT (see the topology)."""

from __future__ import annotations

from etax_platform.observability import configure_logging
from services.binding.app import build
from services.binding.settings import BindingSettings


def main() -> None:
    settings = BindingSettings()
    configure_logging(settings.platform.log_level, "binding")
    build(settings).serve_until_signalled()


if __name__ == "__main__":
    main()
