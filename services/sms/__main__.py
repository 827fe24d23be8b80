"""python -m services.sms: the SMS service, until SIGTERM."""

from __future__ import annotations

from etax_platform.observability import start_process
from services.sms.app import build
from services.sms.settings import SmsSettings


def main() -> None:
    settings = SmsSettings()
    stop = start_process(settings, "sms")
    try:
        build(settings).serve_until_signalled()
    finally:
        stop()


if __name__ == "__main__":
    main()
