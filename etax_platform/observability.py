"""Logging with masked personal numbers, and the request id of the current call."""

from __future__ import annotations

import contextvars
import logging
import sys

from etax_platform.pii import redact

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class MaskingFormatter(logging.Formatter):
    """Formats as usual, then masks ID numbers, phones and emails in the whole line,
    tracebacks included, so nothing personal reaches a log by accident."""

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = request_id.get()
        return redact(super().format(record))


def configure_logging(level: str = "INFO", service: str = "etax") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        MaskingFormatter(
            f"%(asctime)s %(levelname)s {service} [%(request_id)s] %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
