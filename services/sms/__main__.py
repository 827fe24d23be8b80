"""python -m services.sms: the SMS service, until SIGTERM."""

from __future__ import annotations

from etax_platform.observability import configure_logging
from services.sms.app import build
from services.sms.settings import SmsSettings


def main() -> None:
    settings = SmsSettings()
    configure_logging(settings.platform.log_level, "sms")
    build(settings).serve_until_signalled()


if __name__ == "__main__":
    main()
