"""Time in China Standard Time, injectable so tests move time instead of sleeping.

Days and midnights (E1 lockout, C2 username year) are those of Asia/Shanghai.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from etax_platform.errors import invalid

CST = ZoneInfo("Asia/Shanghai")

# The instants a request may carry. Protobuf allows 0001-01-01..9999-12-31 UTC, but the last
# day of that overflows a CST datetime, and a far bound leaves no room for the day and
# period arithmetic done on it later; before 1970 Asia/Shanghai has odd offsets (LMT) and
# stored millis would go negative. Nothing the tax bureau records lies outside these.
EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(9000, 1, 1, tzinfo=UTC)  # exclusive
_EARLIEST_SECONDS = int(EARLIEST_INSTANT.timestamp())
_LATEST_SECONDS = int(LATEST_INSTANT.timestamp())
_MAX_NANOS = 999_999_999


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


_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_timestamp(instant: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for an aware datetime (what Timestamp.FromDatetime gives, in
    integer arithmetic: a third of its cost, on every answer that carries an instant)."""
    if instant.tzinfo is None:  # as FromDatetime reads it
        instant = instant.replace(tzinfo=UTC)
    since = instant - _UNIX_EPOCH
    return timestamp_pb2.Timestamp(
        seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1_000
    )


def from_timestamp(stamp: timestamp_pb2.Timestamp, field_name: str = "timestamp") -> datetime:
    """A Timestamp as a CST instant; INVALID_ARGUMENT naming the field when its nanos are
    outside 0..999,999,999 or its instant outside EARLIEST_INSTANT..LATEST_INSTANT."""
    in_range = _EARLIEST_SECONDS <= stamp.seconds < _LATEST_SECONDS
    if not (in_range and 0 <= stamp.nanos <= _MAX_NANOS):
        raise invalid(field_name)
    return stamp.ToDatetime(tzinfo=CST)


def optional_instant(message: Message, field_name: str) -> datetime | None:
    """A message's optional Timestamp field as a CST instant, None when unset;
    INVALID_ARGUMENT naming the field when it is out of range (see from_timestamp)."""
    if not message.HasField(field_name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field_name)
    return from_timestamp(stamp, field_name)
