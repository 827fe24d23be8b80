"""E1 lockout: 5 consecutive failures of one authentication method within a CST day lock
that method's level and every lower level, until 00:00 CST the next day, a password reset
(password level) or a passed face check (every level).

Exact under concurrency and across replicas (E3): an attempt is counted as a failure
*before* the credential is checked, in one script on the person's record for the day
(scripts.py), and a success then clears that method's run. So 20 simultaneous wrong
passwords get 5 tries between them, and a right password arriving after them is refused.
The record's key carries the person's owner tag, as their login challenges' keys do: the
login counts a code attempt and reads its challenge in one step, and ends the run and
takes the challenge in another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from etax.common.v1 import types_pb2

from etax_platform.clock import Clock, cst_day, next_cst_midnight, to_millis
from etax_platform.errors import DomainError, Reason
from etax_platform.kv import KeyValueStore, Reply, owned_key
from services.auth import metrics, scripts
from services.auth.flows import Flow, Flows, owner_tag

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
    """Consecutive failures per method on one CST day (the hash fields of its record)."""

    runs: dict[str, int] = field(default_factory=dict)

    def run(self, method: Method) -> int:
        return self.runs.get(_NAMES[method], 0)

    def locking_method(self, method: Method) -> Method | None:
        """The method whose lock covers `method` (itself or a higher level), if any."""
        for other, level in sorted(LEVELS.items(), key=lambda item: -item[1]):
            if level >= LEVELS[method] and self.run(other) >= MAX_CONSECUTIVE_FAILURES:
                return other
        return None


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


def _covering(method: Method) -> list[str]:
    """The methods whose lock covers `method` (its level and above), highest first."""
    return [
        _NAMES[other]
        for other, level in sorted(LEVELS.items(), key=lambda item: -item[1])
        if level >= LEVELS[method]
    ]


# Each method's, once: every attempt sends them (sorting them per call showed in profiles).
_COVERING = {method: tuple(_covering(method)) for method in LEVELS}


_BY_NAME = {name: method for method, name in _NAMES.items()}


class Lockout:
    def __init__(self, store: KeyValueStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    @staticmethod
    def _day_key(tag: str, now: datetime) -> str:
        return owned_key("auth:lockout", tag, cst_day(now).isoformat())

    def _key(self, person_id: str, now: datetime) -> str:
        return self._day_key(owner_tag(person_id), now)

    def _ttl_ms(self, now: datetime) -> int:
        # Garbage collection only: the key names its day, so midnight unlocks by itself.
        # Kept through the next day, so that day's first login can count the unlock.
        ttl = next_cst_midnight(now) - now + timedelta(days=1, hours=1)
        return int(ttl.total_seconds() * 1000)

    def _count_args(self, method: Method, now: datetime) -> list[str | int]:
        return [_NAMES[method], MAX_CONSECUTIVE_FAILURES, self._ttl_ms(now), *_COVERING[method]]

    @staticmethod
    def _counted(
        reply: Reply, person_id: str, method: Method, key: str, now: datetime
    ) -> Attempt | DomainError:
        """COUNT's reply (also COUNT_AND_LOAD's first two items)."""
        if reply[0] == b"locked":
            return locked_error(method, _BY_NAME[reply[1].decode()], now)
        remaining = MAX_CONSECUTIVE_FAILURES - int(reply[1])
        return Attempt(person_id, method, key, remaining, now)

    def begin(self, person_id: str, method: Method) -> Attempt:
        """Counts an attempt before the credential is checked; AUTH_METHOD_LOCKED if locked."""
        now = self._clock.now()
        key = self._key(person_id, now)
        reply = self._store.run(scripts.COUNT, [key], self._count_args(method, now))
        outcome = self._counted(reply, person_id, method, key, now)
        if isinstance(outcome, DomainError):
            raise outcome
        if method == PASSWORD and reply[2] == 1:
            self._count_midnight_unlock(person_id, now)
        return outcome

    def _count_midnight_unlock(self, person_id: str, now: datetime) -> None:
        """E1's third way out, for the metrics: the person's first password attempt of a
        day (COUNT found no record of the day) finds yesterday's record still locked, so
        midnight unlocked it. The script deletes that record as it finds it locked, so
        replicas count it once. (Logins start with the password, whose Argon2id check
        dwarfs this call.)"""
        yesterday = self._key(person_id, now - timedelta(days=1))
        if self._store.run(
            scripts.TAKE_IF_LOCKED, [yesterday], [MAX_CONSECUTIVE_FAILURES, *_NAMES.values()]
        ):
            metrics.UNLOCKS.labels("midnight").inc()

    def succeeded(self, attempt: Attempt) -> None:
        """The credential was right: the method's run of failures ends."""
        self._store.run(scripts.CLEAR, [attempt.day_key], [_NAMES[attempt.method]])

    def succeeded_creating(self, attempt: Attempt, flows: Flows, **fields: object) -> Flow:
        """`succeeded`, and the person's flow that follows (a login challenge) stored, in
        one step."""
        flow = flows.new(owner=attempt.person_id, **fields)
        created = self._store.run(
            scripts.CLEAR_AND_CREATE,
            [attempt.day_key, flows.key(flow.flow_id)],
            [_NAMES[attempt.method], flow.to_bytes(), flows.store_ttl_ms],
        )
        if not created:
            raise RuntimeError("flow id collision")  # 128 random bits
        return flow

    def begin_with_flow(
        self, flows: Flows, flow_id: str, method: Method
    ) -> tuple[Flow, Attempt | DomainError]:
        """Reads a person's flow and counts an attempt of `method` for its person, in one
        step when the flow id carries the owner tag. TICKET_INVALID when it is gone or past
        its deadline; STATE_CONFLICT (not counted) when it is no person's or has no code
        sent yet. Otherwise the counted attempt, or the lock that refuses it."""
        flows.require_id(flow_id)
        now = self._clock.now()
        tag = flows.tag_of(flow_id)
        if tag is None:  # an id without the tag (none of login's own): two steps
            flow = flows.load(flow_id)
            _check_person_flow(flow, flows)
            return flow, _attempt_or_error(lambda: self.begin(flow.person_id, method))
        key = self._day_key(tag, now)
        reply = self._store.run(
            scripts.COUNT_AND_LOAD,
            [flows.key(flow_id), key],
            [to_millis(now), *self._count_args(method, now)],
        )
        kind = reply[0]
        if kind == b"invalid":
            raise flows.invalid()
        if kind not in {b"counted", b"locked"}:
            raise _STATE_CONFLICTS[kind.decode()]()
        flow = Flow.from_bytes(reply[2])
        return flow, self._counted(reply, flow.person_id, method, key, now)

    def succeeded_consuming(self, attempt: Attempt, flows: Flows, flow_id: str) -> Flow:
        """`succeeded`, and the flow taken out of the store (exactly one caller gets it), in
        one step for a flow of the attempt's person."""
        if flows.tag_of(flow_id) != owner_tag(attempt.person_id):
            self.succeeded(attempt)
            return flows.consume(flow_id)
        raw = self._store.run(
            scripts.CLEAR_AND_CONSUME,
            [attempt.day_key, flows.key(flow_id)],
            [_NAMES[attempt.method]],
        )
        flow = flows.live(raw)
        if flow is None:
            raise flows.invalid()
        return flow

    def abandon(self, attempt: Attempt) -> None:
        """The check could not be made (a dependency failed): the attempt does not count."""
        self._store.run(scripts.UNCOUNT, [attempt.day_key], [_NAMES[attempt.method]])

    def _record(self, person_id: str, now: datetime) -> DayRecord:
        names = list(_NAMES.values())
        runs = self._store.run(scripts.READ, [self._key(person_id, now)], names)
        return DayRecord({n: int(r) for n, r in zip(names, runs, strict=True) if r is not None})

    def status(self, person_id: str, method: Method) -> DomainError | None:
        """The lock error `method` would get now, without counting an attempt."""
        now = self._clock.now()
        locked_by = self._record(person_id, now).locking_method(method)
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
        self._store.run(
            scripts.ADD, [self._key(person_id, now)], [_NAMES[method], count, self._ttl_ms(now)]
        )

    def _clear(self, key: str, methods: Iterable[Method]) -> None:
        self._store.run(scripts.CLEAR, [key], [_NAMES[method] for method in methods])


# What login step 2 says about a challenge that is not ready for a code (login.py).
_STATE_CONFLICTS = {
    "no_person": lambda: DomainError(
        Reason.STATE_CONFLICT, "请使用税务APP扫码完成人脸识别", {"field": "challenge_id"}
    ),
    "no_identity": lambda: DomainError(
        Reason.STATE_CONFLICT, "请先选择特定主体编号", {"field": "subject_number"}
    ),
    "no_code": lambda: DomainError(Reason.STATE_CONFLICT, "请先获取验证码", {"field": "code"}),
}


def _check_person_flow(flow: Flow, flows: Flows) -> None:
    for missing, kind in (
        (not flow.person_id, "no_person"),
        (not flow.identity, "no_identity"),
        (not flow.verification_id, "no_code"),
    ):
        if missing:
            raise _STATE_CONFLICTS[kind]()


def _attempt_or_error(begin: Callable[[], Attempt]) -> Attempt | DomainError:
    try:
        return begin()
    except DomainError as error:
        return error
