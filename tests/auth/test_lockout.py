"""E1 lockout and its exactness under concurrency (E3), on the in-process store and Redis."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY

from etax_platform.clock import ManualClock
from etax_platform.errors import DomainError, Reason
from etax_platform.kv import KeyValueStore
from services.auth.lockout import FACE, PASSWORD, SMS_CODE, Lockout

PERSON = "person-1"


@pytest.fixture
def lockout(kv_store: KeyValueStore, clock: ManualClock) -> Lockout:
    return Lockout(kv_store, clock)


def fail(lockout: Lockout, method: int, times: int = 1) -> DomainError:
    error = None
    for _ in range(times):
        error = lockout.begin(PERSON, method).failed()
    assert error is not None
    return error


def reason(lockout: Lockout, method: int) -> Reason | None:
    try:
        attempt = lockout.begin(PERSON, method)
    except DomainError as error:
        return error.reason
    lockout.abandon(attempt)
    return None


def test_e1_each_failure_says_how_many_attempts_are_left(lockout: Lockout) -> None:
    for left in (4, 3, 2, 1):
        error = fail(lockout, PASSWORD)
        assert error.reason is Reason.CREDENTIALS_INVALID
        assert error.metadata["remaining_attempts"] == str(left)
        assert f"还可以尝试{left}次" in error.user_text
    fifth = fail(lockout, PASSWORD)
    assert fifth.reason is Reason.AUTH_METHOD_LOCKED


def test_e1_five_failures_lock_the_method_until_next_midnight_cst(
    lockout: Lockout, clock: ManualClock
) -> None:
    fail(lockout, PASSWORD, 5)
    with pytest.raises(DomainError) as caught:
        lockout.begin(PERSON, PASSWORD)
    assert caught.value.reason is Reason.AUTH_METHOD_LOCKED
    assert caught.value.metadata["unlock_at"] == "2026-11-28T00:00:00+08:00"
    assert "忘记密码" in caught.value.user_text and "刷脸" in caught.value.user_text
    clock.set(clock.now().replace(hour=23, minute=59, second=59))
    assert reason(lockout, PASSWORD) is Reason.AUTH_METHOD_LOCKED
    clock.advance(timedelta(seconds=1))  # 00:00 CST
    assert reason(lockout, PASSWORD) is None


def test_e1_a_success_resets_the_run(lockout: Lockout) -> None:
    fail(lockout, PASSWORD, 4)
    lockout.succeeded(lockout.begin(PERSON, PASSWORD))
    assert fail(lockout, PASSWORD, 4).reason is Reason.CREDENTIALS_INVALID


def test_e1_a_higher_lock_covers_lower_levels_not_higher(lockout: Lockout) -> None:
    fail(lockout, SMS_CODE, 5)
    assert reason(lockout, SMS_CODE) is Reason.AUTH_METHOD_LOCKED
    assert reason(lockout, PASSWORD) is Reason.AUTH_METHOD_LOCKED
    assert reason(lockout, FACE) is None


def test_e1_a_password_lock_leaves_sms_and_face_open(lockout: Lockout) -> None:
    fail(lockout, PASSWORD, 5)
    assert reason(lockout, SMS_CODE) is None
    assert reason(lockout, FACE) is None


def test_e1_face_lock_locks_everything(lockout: Lockout) -> None:
    fail(lockout, FACE, 5)
    assert {reason(lockout, m) for m in (PASSWORD, SMS_CODE, FACE)} == {Reason.AUTH_METHOD_LOCKED}


def test_e1_password_reset_unlocks_the_password_level(lockout: Lockout) -> None:
    fail(lockout, PASSWORD, 5)
    lockout.unlock_after_password_reset(PERSON)
    assert reason(lockout, PASSWORD) is None


def test_e1_password_reset_does_not_lift_a_higher_lock(lockout: Lockout) -> None:
    fail(lockout, SMS_CODE, 5)
    lockout.unlock_after_password_reset(PERSON)
    assert reason(lockout, PASSWORD) is Reason.AUTH_METHOD_LOCKED


def test_e1_a_passed_face_check_unlocks_every_level(lockout: Lockout) -> None:
    fail(lockout, PASSWORD, 5)
    fail(lockout, SMS_CODE, 5)
    lockout.unlock_after_face(PERSON)
    assert {reason(lockout, m) for m in (PASSWORD, SMS_CODE, FACE)} == {None}


def test_e1_face_mismatches_collected_later_count(lockout: Lockout) -> None:
    lockout.record_failures(PERSON, FACE, 3)
    assert fail(lockout, FACE).metadata["remaining_attempts"] == "1"


def test_e1_an_abandoned_attempt_does_not_count(lockout: Lockout) -> None:
    for _ in range(10):
        lockout.abandon(lockout.begin(PERSON, PASSWORD))
    assert fail(lockout, PASSWORD).metadata["remaining_attempts"] == "4"


def test_e1_persons_are_counted_apart(lockout: Lockout) -> None:
    fail(lockout, PASSWORD, 5)
    assert lockout.begin("someone-else", PASSWORD).remaining == 4


def test_e3_twenty_simultaneous_wrong_passwords_get_five_tries_then_the_right_one_is_refused(
    lockout: Lockout,
) -> None:
    def wrong_password(_: int) -> str:
        try:
            lockout.begin(PERSON, PASSWORD)
        except DomainError as error:
            return error.reason.value
        return "tried"

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(wrong_password, range(20)))
    assert outcomes.count("tried") == 5
    assert outcomes.count(Reason.AUTH_METHOD_LOCKED.value) == 15
    assert reason(lockout, PASSWORD) is Reason.AUTH_METHOD_LOCKED


def test_e1_a_lock_that_midnight_ended_is_counted_once_at_the_next_days_login(
    lockout: Lockout, clock: ManualClock
) -> None:
    """etax_auth_unlocks_total{way="midnight"}: the first password attempt after the
    midnight that ended a lock counts it, once (the record is then gone)."""

    def midnight_unlocks() -> float:
        return REGISTRY.get_sample_value("etax_auth_unlocks_total", {"way": "midnight"}) or 0.0

    before = midnight_unlocks()
    fail(lockout, PASSWORD, 5)
    assert reason(lockout, PASSWORD) is Reason.AUTH_METHOD_LOCKED
    clock.advance(timedelta(days=1))
    assert reason(lockout, PASSWORD) is None
    assert midnight_unlocks() == before + 1
    assert reason(lockout, PASSWORD) is None
    assert midnight_unlocks() == before + 1
