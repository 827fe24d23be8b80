"""A dependency that is down (binding, SMS, face) makes a login step UNAVAILABLE with a
reason; a code or password check that could not be made does not count (E1)."""

from __future__ import annotations

import grpc
from etax.auth.v1 import auth_pb2

from services.auth.lockout import PASSWORD, SMS_CODE, Lockout
from tests.auth.conftest import failure_of
from tests.auth.platform import ENTERPRISE, Platform


def test_binding_down_makes_an_enterprise_login_unavailable(platform: Platform) -> None:
    boss = platform.person()
    code = platform.enterprise(boss)
    platform.binding_host.stop(grace=0)
    failure = failure_of(platform.start, boss.document, entry=ENTERPRISE, enterprise_code=code)
    assert (failure.code, failure.reason, failure.metadata["dependency"]) == (
        grpc.StatusCode.UNAVAILABLE,
        "PROVIDER_UNAVAILABLE",
        "binding",
    )
    assert platform.start(boss.document).challenge_id  # natural-person business needs no binding


def test_e1_a_code_that_could_not_be_checked_does_not_count(platform: Platform) -> None:
    person = platform.person()
    started = platform.start(person.document)
    platform.send_code(started.challenge_id)
    code = platform.last_code(person.phone)
    platform.sms_host.stop(grace=0)
    failure = failure_of(platform.complete_with_code, started.challenge_id, code)
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
    lockout = Lockout(platform.store, platform.clock)
    # The unchecked code left no failure behind: this is the first counted attempt.
    assert lockout.begin(person.person_id, SMS_CODE).remaining == 4
    assert lockout.begin(person.person_id, PASSWORD).remaining == 4


def test_face_down_makes_scan_verification_unavailable(platform: Platform) -> None:
    person = platform.person()
    started = platform.start(person.document)
    platform.face_host.stop(grace=0)
    failure = failure_of(
        platform.auth.StartLoginFace,
        auth_pb2.StartLoginFaceRequest(challenge_id=started.challenge_id),
        timeout=10,
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
