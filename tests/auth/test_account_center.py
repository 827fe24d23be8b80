"""The account center through the gRPC API: C1-C4, B3, the masked profile, tokens."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import grpc
import pytest
from etax.auth.v1 import auth_pb2
from etax.common.v1 import types_pb2

from etax_platform.clock import CST
from etax_platform.errors import from_rpc_error
from etax_platform.tokens import AccessClaims, SigningKey, TokenIssuer
from tests.auth.conftest import (
    PASSWORD,
    REGISTRATION,
    Auth,
    failure_of,
    named,
    new_phone,
    new_resident_id,
)

# --- tokens ------------------------------------------------------------------------------


def test_account_center_needs_a_valid_access_token(auth: Auth) -> None:
    person_id = auth.register()
    request = auth_pb2.GetProfileRequest()
    assert failure_of(auth.account.GetProfile, request, timeout=10).reason == "UNAUTHENTICATED"
    garbage = (("authorization", "Bearer not-a-token"),)
    failure = failure_of(auth.account.GetProfile, request, metadata=garbage, timeout=10)
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    stranger = TokenIssuer(SigningKey.generate(), auth.clock)
    token, _ = stranger.issue(AccessClaims(person_id, "s", 1, "37", 4))
    forged = (("authorization", f"Bearer {token}"),)
    assert failure_of(auth.account.GetProfile, request, metadata=forged, timeout=10).reason == (
        "UNAUTHENTICATED"
    )
    valid = auth.as_person(person_id)
    assert auth.account.GetProfile(request, metadata=valid, timeout=10).profile.person_id
    auth.clock.advance(timedelta(hours=1))
    assert failure_of(auth.account.GetProfile, request, metadata=valid, timeout=10).reason == (
        "UNAUTHENTICATED"
    )


def test_profile_masks_every_personal_number(auth: Auth) -> None:
    number, phone = new_resident_id(), new_phone()
    person_id = auth.register(number, phone=phone, name="欧阳小明")
    response = auth.account.GetProfile(
        auth_pb2.GetProfileRequest(), metadata=auth.as_person(person_id), timeout=10
    )
    wire = response.SerializeToString()
    for secret in (number, phone, "欧阳小明"):
        assert secret.encode() not in wire
    profile = response.profile
    assert profile.masked_name == "欧**明"
    assert profile.masked_document_number == f"{number[:4]}**********{number[-4:]}"
    assert profile.phones[0].masked_number == f"{phone[:3]}****{phone[-4:]}"


# --- C1 --------------------------------------------------------------------------------------


def _change(auth: Auth, person_id: str, old: str, new: str) -> None:
    auth.account.ChangePassword(
        auth_pb2.ChangePasswordRequest(old_password=old, new_password=new),
        metadata=auth.as_person(person_id),
        timeout=10,
    )


def test_a1_c1_change_password_needs_the_old_one_and_the_policy(auth: Auth) -> None:
    """A1: the person's one personal password (there is no other), changed under C1."""
    person_id = auth.register()
    failure = failure_of(_change, auth, person_id, "Wrong.pass1", "New.pass12")
    assert (failure.code, failure.reason, failure.metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CREDENTIALS_INVALID",
        "old_password",
    )
    failure = failure_of(_change, auth, person_id, PASSWORD, "newpassword")
    assert (failure.code, failure.reason, failure.metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PASSWORD_POLICY",
        "new_password",
    )
    _change(auth, person_id, PASSWORD, "New.pass12")
    # The old password no longer works; the new one does.
    assert failure_of(_change, auth, person_id, PASSWORD, "Other.pass1").reason == (
        "CREDENTIALS_INVALID"
    )
    _change(auth, person_id, "New.pass12", "Other.pass1")


def test_c1_a_migrated_person_without_a_password_is_sent_to_forgot_password(auth: Auth) -> None:
    person_id = auth.internal.ImportLegacyPerson(
        auth_pb2.ImportLegacyPersonRequest(identity=named(new_resident_id()), province="37"),
        timeout=10,
    ).person_id
    failure = failure_of(_change, auth, person_id, "Any.pass12", "New.pass12")
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "STATE_CONFLICT",
    )
    assert "忘记密码" in failure.text


def test_c1_password_hashing_does_not_stall_other_calls(auth: Auth) -> None:
    """Argon2id runs in its own pool: a profile read answers while hashes are queued."""
    person_id = auth.register()
    with ThreadPoolExecutor(12) as pool:
        slow = [
            pool.submit(failure_of, _change, auth, person_id, f"Wrong.pass{i:02d}", "New.pass12")
            for i in range(10)
        ]
        quick = pool.submit(auth.profile, person_id)
        assert quick.result(timeout=30).person_id == person_id
        still_hashing = sum(not f.done() for f in slow)
        assert all(f.result(timeout=60).reason == "CREDENTIALS_INVALID" for f in slow)
    assert still_hashing > 0


# --- C2 --------------------------------------------------------------------------------------


def _set_username(auth: Auth, person_id: str, username: str) -> str:
    return auth.account.SetUsername(
        auth_pb2.SetUsernameRequest(username=username),
        metadata=auth.as_person(person_id),
        timeout=10,
    ).username


def test_c2_username_is_optional_and_unique_ignoring_case(auth: Auth) -> None:
    first, second = auth.register(), auth.register()
    assert auth.profile(first).username == ""
    assert _set_username(auth, first, "Xiaoming_01") == "Xiaoming_01"
    failure = failure_of(_set_username, auth, second, "xiaoming_01")
    assert (failure.code, failure.reason) == (grpc.StatusCode.ALREADY_EXISTS, "USERNAME_TAKEN")
    assert _set_username(auth, second, "小明同学") == "小明同学"


def test_c2_username_changes_once_per_cst_calendar_year(auth: Auth) -> None:
    person_id = auth.register(username="first_name")  # adding is not a change
    auth.clock.set(datetime(2026, 3, 1, 10, 0, tzinfo=CST))
    assert _set_username(auth, person_id, "second_name") == "second_name"
    changed_at = auth.profile(person_id).username_changed_at.ToDatetime(tzinfo=CST)
    assert changed_at == datetime(2026, 3, 1, 10, 0, tzinfo=CST)
    # Setting the same name again changes nothing and is allowed.
    assert _set_username(auth, person_id, "second_name") == "second_name"
    auth.clock.set(datetime(2026, 12, 31, 23, 59, 59, tzinfo=CST))
    failure = failure_of(_set_username, auth, person_id, "third_name")
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "USERNAME_CHANGE_TOO_SOON",
    )
    assert auth.profile(person_id).username == "second_name"
    # 1 January 00:00 in China is still 31 December in UTC: the CST year counts.
    auth.clock.set(datetime(2027, 1, 1, 0, 0, tzinfo=CST))
    assert _set_username(auth, person_id, "third_name") == "third_name"
    assert failure_of(_set_username, auth, person_id, "fourth_name").reason == (
        "USERNAME_CHANGE_TOO_SOON"
    )


def test_c2_the_first_change_after_adding_is_allowed(auth: Auth) -> None:
    person_id = auth.register()
    assert _set_username(auth, person_id, "added_name") == "added_name"
    assert _set_username(auth, person_id, "changed_name") == "changed_name"
    assert failure_of(_set_username, auth, person_id, "again_name").reason == (
        "USERNAME_CHANGE_TOO_SOON"
    )


@pytest.mark.parametrize(
    "username",
    [
        "13912345678",
        "11010519491231002X",
        "11010519491231002x",
        "EA1234567",
        "E12345678",
        "H12345678",
        "USA110079010101",
        "abc",  # too short
        "a" * 21,  # too long
        "1abcdef",  # starts with a digit
        "ab cd",
        "ab-cd",
        "",
    ],
)
def test_c2_username_never_looks_like_a_phone_or_document(auth: Auth, username: str) -> None:
    person_id = auth.register()
    failure = failure_of(_set_username, auth, person_id, username)
    assert (failure.code, failure.reason, failure.metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "username",
    )


def test_c2_username_never_equals_a_registered_foreign_document(auth: Auth) -> None:
    auth.internal.RecordOfflineRealName(
        auth_pb2.RecordOfflineRealNameRequest(
            identity=named("ALICE2024", "Alice", types_pb2.DOCUMENT_TYPE_FOREIGN_PASSPORT),
            tax_authority=types_pb2.TaxAuthority(code="13701020000", province="37"),
        ),
        timeout=10,
    )
    auth.register("ALICE2024", name="Alice", kind=types_pb2.DOCUMENT_TYPE_FOREIGN_PASSPORT)
    other = auth.register()
    assert failure_of(_set_username, auth, other, "alice2024").reason == "USERNAME_TAKEN"
    assert _set_username(auth, other, "alice2025") == "alice2025"


def test_c2_concurrent_claims_of_one_username_leave_one_owner(auth: Auth) -> None:
    people = [auth.register() for _ in range(6)]

    def claim(person_id: str) -> str:
        try:
            return _set_username(auth, person_id, "popular_name")
        except grpc.RpcError as error:
            domain_error = from_rpc_error(error)
            assert domain_error is not None
            return domain_error.reason.value

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(claim, people))
    assert sorted(outcomes) == ["USERNAME_TAKEN"] * 5 + ["popular_name"]
    owners = [p for p in people if auth.profile(p).username == "popular_name"]
    assert len(owners) == 1


# --- C3 --------------------------------------------------------------------------------------


def test_c3_several_phones_exactly_one_default(auth: Auth) -> None:
    """C3: the default is the phone verified by SMS most recently (registration, adding,
    recovery) or the one chosen in the account center, whichever came last."""
    first = new_phone()
    person_id = auth.register(phone=first)
    auth.clock.advance(timedelta(minutes=1))
    second = auth.add_phone(person_id, new_phone())
    assert second.is_default
    auth.clock.advance(timedelta(minutes=1))
    third = auth.add_phone(person_id, new_phone())
    assert third.is_default
    phones = auth.profile(person_id).phones
    assert len(phones) == 3
    assert [p.phone_id for p in phones if p.is_default] == [third.phone_id]

    auth.account.SetDefaultPhone(
        auth_pb2.SetDefaultPhoneRequest(phone_id=second.phone_id),
        metadata=auth.as_person(person_id),
        timeout=10,
    )
    assert [p.phone_id for p in auth.profile(person_id).phones if p.is_default] == [second.phone_id]
    # Removing the default leaves the most recently verified phone as the default.
    auth.account.RemovePhone(
        auth_pb2.RemovePhoneRequest(phone_id=second.phone_id),
        metadata=auth.as_person(person_id),
        timeout=10,
    )
    phones = auth.profile(person_id).phones
    assert (phones[0].phone_id, phones[0].is_default) == (third.phone_id, True)
    assert sum(p.is_default for p in phones) == 1


def test_c3_adding_a_phone_needs_its_own_code(auth: Auth) -> None:
    person_id = auth.register()
    phone = new_phone()
    verification_id, code = auth.sms.issue(phone, REGISTRATION)
    request = auth_pb2.AddPhoneRequest(phone=phone, verification_id=verification_id, code=code)
    metadata = auth.as_person(person_id)
    failure = failure_of(auth.account.AddPhone, request, metadata=metadata, timeout=10)
    assert failure.reason == "CODE_PURPOSE_MISMATCH"
    verification_id, code = auth.sms.issue(new_phone(), types_pb2.VERIFICATION_PURPOSE_PHONE_ADD)
    request = auth_pb2.AddPhoneRequest(phone=phone, verification_id=verification_id, code=code)
    failure = failure_of(auth.account.AddPhone, request, metadata=metadata, timeout=10)
    assert (failure.reason, failure.metadata["field"]) == ("CODE_INVALID", "phone")
    assert len(auth.profile(person_id).phones) == 1


def test_c3_another_persons_phone_id_is_not_found(auth: Auth) -> None:
    owner, other = auth.register(), auth.register()
    phone_id = auth.profile(owner).phones[0].phone_id
    for call, request in (
        (auth.account.RemovePhone, auth_pb2.RemovePhoneRequest(phone_id=phone_id)),
        (auth.account.SetDefaultPhone, auth_pb2.SetDefaultPhoneRequest(phone_id=phone_id)),
    ):
        failure = failure_of(call, request, metadata=auth.as_person(other), timeout=10)
        assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert len(auth.profile(owner).phones) == 1


# --- C4 --------------------------------------------------------------------------------------


def test_c4_the_last_sms_check_holds_the_phone_and_the_other_loses_it(auth: Auth) -> None:
    shared = new_phone()
    first = auth.register(phone=shared)
    second = auth.register()
    auth.clock.advance(timedelta(minutes=5))
    taken = auth.add_phone(second, shared)
    assert list(auth.profile(first).phones) == []  # the loser's phone is empty
    assert taken.phone_id in {p.phone_id for p in auth.profile(second).phones}
    auth.clock.advance(timedelta(minutes=5))
    auth.add_phone(first, shared)
    assert len(auth.profile(first).phones) == 1
    assert [p.phone_id for p in auth.profile(second).phones] != [taken.phone_id]
    assert taken.phone_id not in {p.phone_id for p in auth.profile(second).phones}


@pytest.mark.parametrize(
    "backend",
    ["sqlite+memory", "postgresql+redis", "postgresql+redis-cluster"],
    indirect=True,
)
def test_c4_concurrent_claims_through_the_api_leave_one_holder(auth: Auth) -> None:
    """C4 under concurrency, with the codes, flows and the service's state on each store
    kind (the phone itself is settled by the database: tests/auth/test_phone_claims.py)."""
    shared = new_phone()
    people = [auth.register() for _ in range(8)]

    def claim(person_id: str) -> bool:
        try:
            auth.add_phone(person_id, shared)
        except grpc.RpcError as error:
            domain_error = from_rpc_error(error)
            assert domain_error is not None and domain_error.reason.value == "STATE_CONFLICT"
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(claim, people))
    holders = [
        p
        for p in people
        if any(ph.masked_number.endswith(shared[-4:]) for ph in auth.profile(p).phones)
    ]
    assert len(holders) == 1


# --- B3 --------------------------------------------------------------------------------------


def _import(auth: Auth, **fields: object) -> auth_pb2.ImportLegacyPersonResponse:
    return auth.internal.ImportLegacyPerson(
        auth_pb2.ImportLegacyPersonRequest(
            identity=named(new_resident_id()),
            province="37",
            **fields,  # type: ignore[arg-type]
        ),
        timeout=10,
    )


def test_b3_migrated_person_upgrades_from_3_to_4_by_face(auth: Auth) -> None:
    imported = _import(auth)
    assert imported.real_name_level == 3
    person_id = imported.person_id
    require = auth_pb2.RequireRealNameLevelRequest(person_id=person_id, min_level=4)
    failure = failure_of(auth.internal.RequireRealNameLevel, require, timeout=10)
    assert (failure.code, failure.reason, failure.metadata) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "REAL_NAME_LEVEL_TOO_LOW",
        {"real_name_level": "3", "required_level": "4"},
    )
    metadata = auth.as_person(person_id)
    face = auth.account.StartRealNameUpgrade(
        auth_pb2.StartRealNameUpgradeRequest(), metadata=metadata, timeout=10
    ).face
    scanned = auth.face.scan(face)
    assert scanned.purpose == types_pb2.VERIFICATION_PURPOSE_REAL_NAME_UPGRADE
    assert scanned.masked_name == "张*三"
    proof = auth.pass_face(face)
    upgraded = auth.account.CompleteRealNameUpgrade(
        auth_pb2.CompleteRealNameUpgradeRequest(proof=proof), metadata=metadata, timeout=10
    )
    assert upgraded.real_name_level == 4
    assert auth.internal.RequireRealNameLevel(require, timeout=10).real_name_level == 4
    # Single use: the same proof does not work twice; a level-4 person needs no upgrade.
    failure = failure_of(
        auth.account.CompleteRealNameUpgrade,
        auth_pb2.CompleteRealNameUpgradeRequest(proof=proof),
        metadata=metadata,
        timeout=10,
    )
    assert failure.reason == "TICKET_INVALID"
    failure = failure_of(
        auth.account.StartRealNameUpgrade,
        auth_pb2.StartRealNameUpgradeRequest(),
        metadata=metadata,
        timeout=10,
    )
    assert failure.reason == "STATE_CONFLICT"


def test_b3_a_proof_of_another_person_does_not_upgrade(auth: Auth) -> None:
    first, second = _import(auth).person_id, _import(auth).person_id
    face = auth.account.StartRealNameUpgrade(
        auth_pb2.StartRealNameUpgradeRequest(), metadata=auth.as_person(first), timeout=10
    ).face
    proof = auth.pass_face(face)
    failure = failure_of(
        auth.account.CompleteRealNameUpgrade,
        auth_pb2.CompleteRealNameUpgradeRequest(proof=proof),
        metadata=auth.as_person(second),
        timeout=10,
    )
    assert failure.reason == "TICKET_INVALID"
    assert auth.profile(second).real_name_level == 3
