"""Time in China Standard Time, injectable so tests move time instead of sleeping.

Days and midnights (E1 lockout, C2 username year) are those of Asia/Shanghai.
"""

from __future__ import annotations

import threading
from datetime import date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

CST = ZoneInfo("Asia/Shanghai")


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware in China Standard Time."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(CST)


class ManualClock:
    """A clock that only moves when told to; thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = (start or datetime(2026, 11, 27, 9, 0, tzinfo=CST)).astimezone(CST)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now += delta
            return self._now

    def set(self, instant: datetime) -> None:
        with self._lock:
            self._now = instant.astimezone(CST)


def cst_day(instant: datetime) -> date:
    """The China-Standard-Time calendar day of an instant."""
    return instant.astimezone(CST).date()


def next_cst_midnight(instant: datetime) -> datetime:
    """00:00 CST of the day after the instant's CST day (E1 unlock time)."""
    return datetime.combine(cst_day(instant) + timedelta(days=1), time(0), tzinfo=CST)


def to_millis(instant: datetime) -> int:
    return int(instant.timestamp() * 1000)


def from_millis(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, tz=CST)


def to_timestamp(instant: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(instant)
    return stamp


def from_timestamp(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=CST)


def optional_instant(message: Message, field_name: str) -> datetime | None:
    """A message's optional Timestamp field as a CST instant, None when unset."""
    if not message.HasField(field_name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field_name)
    return from_timestamp(stamp)
