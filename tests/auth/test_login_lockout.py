"""E1 and E3 through the login RPCs: counted passwords, codes and face mismatches, locks of
a level and every level below, unlock by face or at midnight, exactness under concurrency
and across two auth replicas sharing the database and the store."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import grpc
import pytest
from etax.auth.v1 import auth_pb2
from etax.face.v1 import face_pb2

from etax_platform.errors import from_rpc_error
from tests.auth.conftest import failure_of
from tests.auth.platform import AuthServer, Person, Platform

WRONG = "Wrong.pass1"


def _wrong_code(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


def _start_face(platform: Platform, challenge_id: str) -> auth_pb2.FaceChallenge:
    return platform.auth.StartLoginFace(
        auth_pb2.StartLoginFaceRequest(challenge_id=challenge_id), timeout=10
    ).face


def _complete_face(platform: Platform, challenge_id: str, proof: str) -> auth_pb2.Session:
    return platform.auth.CompleteLoginWithFace(
        auth_pb2.CompleteLoginWithFaceRequest(challenge_id=challenge_id, proof=proof), timeout=10
    ).session


def test_e1_five_wrong_passwords_lock_until_midnight_cst(platform: Platform) -> None:
    person = platform.person()
    platform.clock.set(platform.clock.now().replace(hour=23, minute=0))
    left = [failure_of(platform.start, person.document, WRONG) for _ in range(4)]
    assert [f.metadata["remaining_attempts"] for f in left] == ["4", "3", "2", "1"]
    fifth = failure_of(platform.start, person.document, WRONG)
    assert (fifth.code, fifth.reason) == (grpc.StatusCode.PERMISSION_DENIED, "AUTH_METHOD_LOCKED")
    assert fifth.metadata["unlock_at"] == "2026-11-28T00:00:00+08:00"
    assert "忘记密码" in fifth.text and "刷脸" in fifth.text
    right = failure_of(platform.start, person.document)
    assert right.reason == "AUTH_METHOD_LOCKED"
    platform.clock.set(platform.clock.now().replace(hour=23, minute=59, second=59))
    assert failure_of(platform.start, person.document).reason == "AUTH_METHOD_LOCKED"
    platform.clock.advance(timedelta(seconds=1))  # 00:00 CST
    assert platform.login(person).person_id == person.person_id


def test_e1_a_right_password_resets_the_run(platform: Platform) -> None:
    person = platform.person()
    for _ in range(4):
        failure_of(platform.start, person.document, WRONG)
    platform.start(person.document)
    assert failure_of(platform.start, person.document, WRONG).metadata["remaining_attempts"] == "4"


def test_e1_wrong_codes_lock_the_code_and_password_levels_and_face_unlocks(
    platform: Platform,
) -> None:
    person = platform.person()
    started = platform.start(person.document)
    platform.send_code(started.challenge_id)
    wrong = _wrong_code(platform.last_code(person.phone))
    left = [failure_of(platform.complete_with_code, started.challenge_id, wrong) for _ in range(4)]
    assert [f.reason for f in left] == ["CREDENTIALS_INVALID"] * 4
    assert [f.metadata["remaining_attempts"] for f in left] == ["4", "3", "2", "1"]
    assert "验证码错误" in left[0].text
    locked = failure_of(platform.complete_with_code, started.challenge_id, wrong)
    assert (locked.reason, locked.metadata["method"]) == ("AUTH_METHOD_LOCKED", "sms_code")
    # The lower level (password) is locked too; the higher one (face) is not.
    password = failure_of(platform.start, person.document)
    assert (password.reason, password.metadata["locked_by"]) == ("AUTH_METHOD_LOCKED", "sms_code")
    unlock = platform.auth.StartFaceUnlock(
        auth_pb2.StartFaceUnlockRequest(account=person.phone), timeout=10
    )
    proof = platform.face.pass_(unlock.face)
    platform.auth.CompleteFaceUnlock(
        auth_pb2.CompleteFaceUnlockRequest(unlock_id=unlock.unlock_id, proof=proof), timeout=10
    )
    assert platform.login(person).person_id == person.person_id


def test_e1_face_mismatches_count_when_the_page_reports_them(platform: Platform) -> None:
    person = platform.person()
    started = platform.start(person.document)
    face = _start_face(platform, started.challenge_id)
    for _ in range(2):
        assert platform.capture(face, b"mismatch").state == face_pb2.TICKET_STATE_SCANNED
    reported = failure_of(_complete_face, platform, started.challenge_id, "")
    assert (reported.reason, reported.metadata["new_failures"]) == ("FACE_MISMATCH", "2")
    face = _start_face(platform, started.challenge_id)
    for _ in range(3):
        ticket = platform.capture(face, b"mismatch")
    assert ticket.state == face_pb2.TICKET_STATE_FAILED
    locked = failure_of(_complete_face, platform, started.challenge_id, "")
    assert (locked.reason, locked.metadata["method"]) == ("AUTH_METHOD_LOCKED", "face")
    # Face is the highest level: everything is locked now.
    assert failure_of(platform.start, person.document).reason == "AUTH_METHOD_LOCKED"
    unlock = failure_of(
        platform.auth.StartFaceUnlock, auth_pb2.StartFaceUnlockRequest(account=person.document)
    )
    assert unlock.reason == "AUTH_METHOD_LOCKED"


def test_e1_mismatches_before_a_pass_count_and_can_lock_it(platform: Platform) -> None:
    person = platform.person()
    started = platform.start(person.document)
    for _ in range(2):
        face = _start_face(platform, started.challenge_id)
        for _ in range(2):
            platform.capture(face, b"mismatch")
    # The next ticket collects the earlier one's mismatches: 4 so far.
    face = _start_face(platform, started.challenge_id)
    platform.capture(face, b"mismatch")  # the 5th, reported with the proof
    proof = platform.face.pass_(face)
    refused = failure_of(_complete_face, platform, started.challenge_id, proof)
    assert (refused.reason, refused.metadata["method"]) == ("AUTH_METHOD_LOCKED", "face")


def test_e1_a_passed_face_login_unlocks_the_password(platform: Platform) -> None:
    person = platform.person()
    started = platform.start(person.document)
    for _ in range(5):
        failure_of(platform.start, person.document, WRONG)
    assert failure_of(platform.start, person.document).reason == "AUTH_METHOD_LOCKED"
    # A challenge from before the lock can still finish by face, which unlocks (E1).
    face = _start_face(platform, started.challenge_id)
    platform.capture(face, b"mismatch")
    session = _complete_face(platform, started.challenge_id, platform.face.pass_(face))
    assert session.person_id == person.person_id
    platform.start(person.document)


def _race(servers: list[AuthServer], platform: Platform, person: Person) -> Counter[str]:
    def wrong_password(index: int) -> str:
        try:
            platform.start(person.document, WRONG, server=servers[index % len(servers)])
        except grpc.RpcError as error:
            domain_error = from_rpc_error(error)
            assert domain_error is not None
            return domain_error.reason.value
        return "OK"

    with ThreadPoolExecutor(20) as pool:
        return Counter(pool.map(wrong_password, range(20)))


def test_e3_twenty_simultaneous_wrong_passwords_get_five_tries(platform: Platform) -> None:
    person = platform.person()
    outcomes = _race([platform.server], platform, person)
    assert outcomes == {"CREDENTIALS_INVALID": 4, "AUTH_METHOD_LOCKED": 16}
    assert failure_of(platform.start, person.document).reason == "AUTH_METHOD_LOCKED"
    tried = platform.audit(action="login.password", person_id=person.person_id, outcome="failed")
    assert len(tried) == 5  # only five passwords were ever checked


@pytest.mark.slow
def test_e3_two_replicas_share_the_count(platform: Platform) -> None:
    person = platform.person()
    second = platform.second_server()
    outcomes = _race([platform.server, second], platform, person)
    assert outcomes == {"CREDENTIALS_INVALID": 4, "AUTH_METHOD_LOCKED": 16}
    for server in (platform.server, second):
        refused = failure_of(platform.start, person.document, server=server)
        assert refused.reason == "AUTH_METHOD_LOCKED"
    tried = platform.audit(action="login.password", person_id=person.person_id, outcome="failed")
    assert len(tried) == 5
