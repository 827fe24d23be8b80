"""E1 lockout: 5 consecutive failures of one authentication method within a CST day lock
that method's level and every lower level, until 00:00 CST the next day, a password reset
(password level) or a passed face check (every level).

Exact under concurrency and across replicas (E3): an attempt is counted as a failure
*before* the credential is checked, in one compare-and-set on the person's record for the
day, and a success then clears that method's run. So 20 simultaneous wrong passwords get 5
tries between them, and a right password arriving after them is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from etax.common.v1 import types_pb2

from etax_platform.clock import Clock, cst_day, next_cst_midnight
from etax_platform.errors import DomainError, Reason
from etax_platform.kv import KeyValueStore
from services.auth import metrics

MAX_CONSECUTIVE_FAILURES = 5

Method = types_pb2.AuthMethod
PASSWORD = types_pb2.AUTH_METHOD_PASSWORD
SMS_CODE = types_pb2.AUTH_METHOD_SMS_CODE
FACE = types_pb2.AUTH_METHOD_FACE

# Levels, low to high (E1): a lock at one level also locks every level below it.
LEVELS: dict[Method, int] = {PASSWORD: 1, SMS_CODE: 2, FACE: 3}
_NAMES = {PASSWORD: "password", SMS_CODE: "sms_code", FACE: "face"}
_WORDS = {PASSWORD: "密码认证", SMS_CODE: "短信验证码认证", FACE: "刷脸认证"}


@dataclass(frozen=True)
class DayRecord:
    """Consecutive failures per method on one CST day."""

    runs: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def decode(raw: bytes | None) -> DayRecord:
        return DayRecord(json.loads(raw)) if raw else DayRecord()

    def encode(self) -> bytes:
        return json.dumps(self.runs, sort_keys=True).encode()

    def run(self, method: Method) -> int:
        return self.runs.get(_NAMES[method], 0)

    def locking_method(self, method: Method) -> Method | None:
        """The method whose lock covers `method` (itself or a higher level), if any."""
        for other, level in sorted(LEVELS.items(), key=lambda item: -item[1]):
            if level >= LEVELS[method] and self.run(other) >= MAX_CONSECUTIVE_FAILURES:
                return other
        return None

    def with_run(self, method: Method, value: int) -> DayRecord:
        runs = dict(self.runs)
        if value:
            runs[_NAMES[method]] = value
        else:
            runs.pop(_NAMES[method], None)
        return DayRecord(runs)


def locked_error(method: Method, locked_by: Method, now: datetime) -> DomainError:
    unlock_at = next_cst_midnight(now)
    return DomainError(
        Reason.AUTH_METHOD_LOCKED,
        f"一天内{_WORDS[locked_by]}连续失败{MAX_CONSECUTIVE_FAILURES}次，"
        f"{_WORDS[method]}已锁定至{unlock_at:%Y-%m-%d %H:%M}。"
        "您可以通过“忘记密码”重置密码或刷脸认证自行解锁，或等待次日零时自动解锁。",
        {
            "method": _NAMES[method],
            "locked_by": _NAMES[locked_by],
            "unlock_at": unlock_at.isoformat(),
            "unlock_options": "password_reset,face,wait",
        },
    )


@dataclass(frozen=True)
class Attempt:
    """A counted attempt: `remaining` tries are left if this one fails."""

    person_id: str
    method: Method
    day_key: str
    remaining: int
    started_at: datetime

    def failed(self, message: str | None = None) -> DomainError:
        """The error for a wrong credential: attempts left, or the lock it just caused."""
        if self.remaining <= 0:
            return locked_error(self.method, self.method, self.started_at)
        return DomainError(
            Reason.CREDENTIALS_INVALID,
            message or f"账号或密码错误，您还可以尝试{self.remaining}次",
            {"method": _NAMES[self.method], "remaining_attempts": str(self.remaining)},
        )


class Lockout:
    def __init__(self, store: KeyValueStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    @staticmethod
    def _key(person_id: str, now: datetime) -> str:
        return f"auth:lockout:{person_id}:{cst_day(now).isoformat()}"

    def _ttl(self, now: datetime) -> timedelta:
        # Garbage collection only: the key names its day, so midnight unlocks by itself.
        # Kept through the next day, so that day's first login can count the unlock.
        return next_cst_midnight(now) - now + timedelta(days=1, hours=1)

    def begin(self, person_id: str, method: Method) -> Attempt:
        """Counts an attempt before the credential is checked; AUTH_METHOD_LOCKED if locked."""
        now = self._clock.now()
        key = self._key(person_id, now)
        fresh: list[bool] = []

        def count(raw: bytes | None) -> tuple[bytes | None, Attempt | DomainError]:
            fresh[:] = [raw is None]
            record = DayRecord.decode(raw)
            locked_by = record.locking_method(method)
            if locked_by is not None:
                return raw, locked_error(method, locked_by, now)
            run = record.run(method) + 1
            remaining = MAX_CONSECUTIVE_FAILURES - run
            return record.with_run(method, run).encode(), Attempt(
                person_id, method, key, remaining, now
            )

        outcome = self._store.update(key, count, self._ttl(now))
        if isinstance(outcome, DomainError):
            raise outcome
        if method == PASSWORD and fresh == [True]:
            self._count_midnight_unlock(person_id, now)
        return outcome

    def _count_midnight_unlock(self, person_id: str, now: datetime) -> None:
        """E1's third way out, for the metrics: the person's first password attempt of a
        day finds yesterday's record still locked, so midnight unlocked it. The record is
        deleted at its version, so replicas count it once. (Logins start with the
        password, whose Argon2id check dwarfs this read.)"""
        key = self._key(person_id, now - timedelta(days=1))
        yesterday = self._store.get(key)
        if yesterday is None or DayRecord.decode(yesterday.value).locking_method(PASSWORD) is None:
            return
        if self._store.delete(key, yesterday.version):
            metrics.UNLOCKS.labels("midnight").inc()

    def succeeded(self, attempt: Attempt) -> None:
        """The credential was right: the method's run of failures ends."""
        self._clear(attempt.day_key, [attempt.method])

    def abandon(self, attempt: Attempt) -> None:
        """The check could not be made (a dependency failed): the attempt does not count."""
        key = attempt.day_key

        def uncount(raw: bytes | None) -> tuple[bytes | None, None]:
            record = DayRecord.decode(raw)
            run = record.run(attempt.method)
            return (record.with_run(attempt.method, run - 1).encode() if run else raw), None

        self._store.update(key, uncount, self._ttl(self._clock.now()))

    def status(self, person_id: str, method: Method) -> DomainError | None:
        """The lock error `method` would get now, without counting an attempt."""
        now = self._clock.now()
        current = self._store.get(self._key(person_id, now))
        locked_by = DayRecord.decode(current.value if current else None).locking_method(method)
        return None if locked_by is None else locked_error(method, locked_by, now)

    def unlock_after_password_reset(self, person_id: str) -> None:
        """E1: forgot password clears the password level."""
        self._clear(self._key(person_id, self._clock.now()), [PASSWORD])

    def unlock_after_face(self, person_id: str) -> None:
        """E1: a passed face check clears every level at or below face."""
        self._clear(self._key(person_id, self._clock.now()), list(LEVELS))

    def record_failures(self, person_id: str, method: Method, count: int) -> None:
        """Failures learnt after the fact (face mismatches collected from the face service)."""
        if count <= 0:
            return
        now = self._clock.now()

        def add(raw: bytes | None) -> tuple[bytes | None, None]:
            record = DayRecord.decode(raw)
            return record.with_run(method, record.run(method) + count).encode(), None

        self._store.update(self._key(person_id, now), add, self._ttl(now))

    def _clear(self, key: str, methods: Iterable[Method]) -> None:
        def reset(raw: bytes | None) -> tuple[bytes | None, None]:
            record = DayRecord.decode(raw)
            for method in methods:
                record = record.with_run(method, 0)
            return (record.encode() if record.runs else None), None

        self._store.update(key, reset, self._ttl(self._clock.now()))
