"""The code step the pages share (registration, password reset, phone recovery, phone
add, login): the page's flow in the web session keeps when the next send is allowed (E2,
from the platform's RetryInfo) and when the sent code expires, so the page counts both
down."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from services.web.platform import PlatformError


def ms_from_now(seconds: float) -> int:
    return int((time.time() + seconds) * 1000)


def seconds_until(ms: int) -> int:
    return max(0, int((ms - ms_from_now(0)) / 1000))


def timers(flow: dict[str, Any]) -> dict[str, int]:
    """The template's countdowns: wait_seconds (until the next send), code_seconds."""
    return {
        "wait_seconds": seconds_until(flow.get("send_wait_until_ms", 0)),
        "code_seconds": seconds_until(flow.get("code_expires_ms", 0)),
    }


def refused(flow: dict[str, Any], error: PlatformError) -> bool:
    """A send refused: the button waits as long as the platform says. True if the flow
    changed (the caller stores it)."""
    if error.retry_after is None:
        return False
    flow["send_wait_until_ms"] = ms_from_now(error.retry_after.total_seconds())
    return True


def sent(flow: dict[str, Any], expires_at: datetime | None, unknown_ttl_ms: int = 0) -> None:
    """A code sent: it expires when the platform said (or after `unknown_ttl_ms`)."""
    flow["code_expires_ms"] = (
        int(expires_at.timestamp() * 1000) if expires_at else ms_from_now(unknown_ttl_ms / 1000)
    )
    flow.pop("send_wait_until_ms", None)
