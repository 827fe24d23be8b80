"""Recovery from the login page: forgot password by SMS or face (C5, Q16, Q17), recover
phone (Q5, Q22, C4), self-unlock by face (E1); each counts for lockout like login."""

from __future__ import annotations

from datetime import timedelta

from etax.auth.v1 import auth_pb2
from etax.common.v1 import types_pb2

from etax_platform.pii import mask_phone
from tests.auth.conftest import failure_of, new_phone
from tests.auth.platform import Person, Platform, bearer

NEW_PASSWORD = "N3w-password"
RESET = types_pb2.VERIFICATION_PURPOSE_PASSWORD_RESET
PHONE_RECOVERY = types_pb2.VERIFICATION_PURPOSE_PHONE_RECOVERY


def _reset_by_code(
    platform: Platform, person: Person, code: str | None = None, password: str = NEW_PASSWORD
) -> str:
    started = platform.auth.StartPasswordReset(
        auth_pb2.StartPasswordResetRequest(account=person.phone, province="37"), timeout=10
    )
    platform.auth.SendPasswordResetCode(
        auth_pb2.SendPasswordResetCodeRequest(reset_id=started.reset_id), timeout=10
    )
    _complete(
        platform, started.reset_id, password, code=code or platform.last_code(person.phone, RESET)
    )
    return started.reset_id


def _complete(platform: Platform, reset_id: str, password: str, **proof: str) -> None:
    platform.auth.CompletePasswordReset(
        auth_pb2.CompletePasswordResetRequest(reset_id=reset_id, new_password=password, **proof),
        timeout=20,
    )


def test_c5_forgot_password_by_sms_code(platform: Platform) -> None:
    person = platform.person()
    session = platform.login(person)
    started = platform.auth.StartPasswordReset(
        auth_pb2.StartPasswordResetRequest(account=person.document, province="37"), timeout=10
    )
    assert (started.masked_phone, started.phone_empty) == (mask_phone(person.phone), False)
    sent = platform.auth.SendPasswordResetCode(
        auth_pb2.SendPasswordResetCodeRequest(reset_id=started.reset_id), timeout=10
    )
    assert sent.masked_phone == mask_phone(person.phone)
    code = platform.last_code(person.phone, RESET)
    weak = failure_of(_complete, platform, started.reset_id, "short", code=code)
    assert (weak.reason, weak.metadata["field"]) == ("PASSWORD_POLICY", "new_password")
    _complete(platform, started.reset_id, NEW_PASSWORD, code=code)  # the code was not spent
    assert failure_of(platform.start, person.document).reason == "CREDENTIALS_INVALID"
    person.password = NEW_PASSWORD
    assert platform.login(person).person_id == person.person_id
    # Every earlier session of the person ends.
    refused = failure_of(
        platform.server.account.GetProfile,
        auth_pb2.GetProfileRequest(),
        metadata=bearer(session),
        timeout=10,
    )
    assert refused.reason == "UNAUTHENTICATED"
    assert failure_of(_complete, platform, started.reset_id, NEW_PASSWORD, code=code).reason == (
        "TICKET_INVALID"
    )


def test_c5_q17_forgot_password_by_face_when_the_phone_is_empty(platform: Platform) -> None:
    person = platform.person()
    platform.accounts.add_phone(platform.person().person_id, person.phone)  # taken (C4)
    started = platform.auth.StartPasswordReset(
        auth_pb2.StartPasswordResetRequest(account=person.document), timeout=10
    )
    assert started.phone_empty
    empty = failure_of(
        platform.auth.SendPasswordResetCode,
        auth_pb2.SendPasswordResetCodeRequest(reset_id=started.reset_id),
        timeout=10,
    )
    assert empty.reason == "PHONE_EMPTY"
    face = platform.auth.StartPasswordResetFace(
        auth_pb2.StartPasswordResetFaceRequest(reset_id=started.reset_id), timeout=10
    ).face
    _complete(platform, started.reset_id, NEW_PASSWORD, face_proof=platform.face.pass_(face))
    assert platform.start(person.document, NEW_PASSWORD).phone_empty


def test_e1_forgot_password_clears_the_password_lock(platform: Platform) -> None:
    person = platform.person()
    for _ in range(5):
        failure_of(platform.start, person.document, "Wrong.pass1")
    assert failure_of(platform.start, person.document).reason == "AUTH_METHOD_LOCKED"
    _reset_by_code(platform, person)
    person.password = NEW_PASSWORD
    assert platform.login(person).person_id == person.person_id
    unlocks = platform.audit(action="lockout.unlock", person_id=person.person_id)
    assert [u["detail"] for u in unlocks] == ['{"by": "password_reset"}']


def test_e1_wrong_reset_codes_count_for_the_code_level(platform: Platform) -> None:
    person = platform.person()
    started = platform.auth.StartPasswordReset(
        auth_pb2.StartPasswordResetRequest(account=person.document), timeout=10
    )
    platform.auth.SendPasswordResetCode(
        auth_pb2.SendPasswordResetCodeRequest(reset_id=started.reset_id), timeout=10
    )
    code = platform.last_code(person.phone, RESET)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    outcomes = [
        failure_of(_complete, platform, started.reset_id, NEW_PASSWORD, code=wrong)
        for _ in range(5)
    ]
    assert [o.reason for o in outcomes] == ["CREDENTIALS_INVALID"] * 4 + ["AUTH_METHOD_LOCKED"]
    # The code level's lock covers the password (lower) level at login too.
    assert failure_of(platform.start, person.document).reason == "AUTH_METHOD_LOCKED"


def test_q5_c4_c6_recover_phone_takes_the_new_number_over(platform: Platform) -> None:
    person, holder = platform.person(), platform.person()
    lost = person.phone
    new = holder.phone  # the new phone is held by someone else (C4: the newer check wins)
    recovery = platform.auth.StartPhoneRecovery(
        auth_pb2.StartPhoneRecoveryRequest(account=person.document, password=person.password),
        timeout=20,
    )
    verification_id, code = platform.sms.issue(new, PHONE_RECOVERY)
    wrong_phone = failure_of(
        platform.auth.CompletePhoneRecovery,
        auth_pb2.CompletePhoneRecoveryRequest(
            recovery_id=recovery.recovery_id,
            phone=new_phone(),
            verification_id=verification_id,
            code=code,
        ),
        timeout=10,
    )
    assert (wrong_phone.reason, wrong_phone.metadata["field"]) == ("CODE_INVALID", "phone")
    verification_id, code = platform.sms.issue(new, PHONE_RECOVERY)
    platform.clock.advance(timedelta(seconds=1))
    done = platform.auth.CompletePhoneRecovery(
        auth_pb2.CompletePhoneRecoveryRequest(
            recovery_id=recovery.recovery_id, phone=new, verification_id=verification_id, code=code
        ),
        timeout=10,
    )
    assert done.masked_phone == mask_phone(new)
    phones = platform.accounts.profile(person.person_id).phones
    # C6: the new number replaced the lost default phone, which is gone.
    assert [(p.masked_number, p.is_default) for p in phones] == [(mask_phone(new), True)]
    assert failure_of(platform.start, lost).reason == "PHONE_NOT_FOUND"
    assert platform.accounts.profile(holder.person_id).phones == []
    assert platform.start(person.document).masked_phone == mask_phone(new)
    person.phone = new
    assert platform.login(person, account=new).person_id == person.person_id
    assert platform.start(holder.document).phone_empty
    recovered = platform.audit(action="phone.recover", person_id=person.person_id)
    assert recovered[-1]["outcome"] == "ok" and '"takeover": true' in recovered[-1]["detail"]
    assert "phone.taken_over" in [e["action"] for e in platform.audit(person_id=holder.person_id)]


def test_e1_recover_phone_needs_the_password_and_counts_it(platform: Platform) -> None:
    person = platform.person()
    wrong = failure_of(
        platform.auth.StartPhoneRecovery,
        auth_pb2.StartPhoneRecoveryRequest(account=person.document, password="Wrong.pass1"),
        timeout=20,
    )
    assert (wrong.reason, wrong.metadata["remaining_attempts"]) == ("CREDENTIALS_INVALID", "4")
    assert (
        failure_of(platform.start, person.document, "Wrong.pass1").metadata["remaining_attempts"]
        == "3"
    )


def test_e1_self_unlock_by_face(platform: Platform) -> None:
    person = platform.person()
    for _ in range(5):
        failure_of(platform.start, person.document, "Wrong.pass1")
    unlock = platform.auth.StartFaceUnlock(
        auth_pb2.StartFaceUnlockRequest(account=person.document), timeout=10
    )
    mismatched = platform.capture(unlock.face, b"mismatch")
    assert mismatched.attempts_left == 2
    proof = platform.face.pass_(unlock.face)
    platform.auth.CompleteFaceUnlock(
        auth_pb2.CompleteFaceUnlockRequest(unlock_id=unlock.unlock_id, proof=proof), timeout=10
    )
    assert platform.login(person).person_id == person.person_id
    replay = failure_of(
        platform.auth.CompleteFaceUnlock,
        auth_pb2.CompleteFaceUnlockRequest(unlock_id=unlock.unlock_id, proof=proof),
        timeout=10,
    )
    assert replay.reason == "TICKET_INVALID"
