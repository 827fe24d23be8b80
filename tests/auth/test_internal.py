"""InternalAuthService: the hall, migrated persons, lookups for binding, real-name levels."""

from __future__ import annotations

import base64

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from etax.auth.v1 import auth_pb2
from etax.common.v1 import types_pb2

from tests.auth.conftest import Auth, failure_of, named, new_phone, new_resident_id

HALL = types_pb2.TaxAuthority(code="13701020000", name="历下区税务局", province="37")


def _import(auth: Auth, number: str, **fields: object) -> auth_pb2.ImportLegacyPersonResponse:
    return auth.internal.ImportLegacyPerson(
        auth_pb2.ImportLegacyPersonRequest(
            identity=named(number),
            province="37",
            **fields,  # type: ignore[arg-type]
        ),
        timeout=10,
    )


def test_b3_imported_person_without_face_is_level_3_with_face_level_4(auth: Auth) -> None:
    without = _import(auth, new_resident_id())
    assert without.real_name_level == 3
    with_face = _import(auth, new_resident_id(), face_verified=True)
    assert with_face.real_name_level == 4
    person = auth.internal.GetPerson(
        auth_pb2.GetPersonRequest(person_id=without.person_id), timeout=10
    ).person
    assert (person.real_name_level, person.registered_province) == (3, "37")


def test_b3_importing_a_registered_document_says_so(auth: Auth) -> None:
    number = new_resident_id()
    auth.register(number)
    failure = failure_of(_import, auth, number)
    assert (failure.code, failure.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_REGISTERED")


def test_c4_an_imported_phone_never_takes_a_held_number(auth: Auth) -> None:
    held, free = new_phone(), new_phone()
    holder = auth.register(phone=held)
    taken_try = _import(auth, new_resident_id(), phone=held)
    assert list(auth.profile(taken_try.person_id).phones) == []
    assert len(auth.profile(holder).phones) == 1
    imported = _import(auth, new_resident_id(), phone=free)
    (phone,) = auth.profile(imported.person_id).phones
    assert phone.is_default and not phone.HasField("verified_at")
    # The first real SMS check on it (registration of someone else) takes it over.
    auth.register(phone=free)
    assert list(auth.profile(imported.person_id).phones) == []


def test_imported_password_hash_must_be_a_known_format(auth: Auth) -> None:
    failure = failure_of(
        _import, auth, new_resident_id(), legacy_password_hash="5f4dcc3b5aa765d61d8327deb882cf99"
    )
    assert (failure.code, failure.reason, failure.metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "legacy_password_hash",
    )
    # The migrated person's old password works for the account center at once.
    argon = (  # "Passw0rd!" hashed elsewhere with the same parameters
        "$argon2id$v=19$m=19456,t=2,p=1$W6inZNZ5GPx2FL470X0qjQ"
        "$DraYz9Ci3GVusrli/xpIRWSbsmIjJ5T0hWFnvZEHujE"
    )
    salt = b"0123456789abcdef"
    digest = PBKDF2HMAC(hashes.SHA256(), 32, salt, 1000).derive(b"Old.pass1")
    pbkdf2 = "$pbkdf2-sha256$1000${}${}".format(
        *(base64.b64encode(raw).decode().rstrip("=").replace("+", ".") for raw in (salt, digest))
    )
    for legacy_hash, password in ((argon, "Passw0rd!"), (pbkdf2, "Old.pass1")):
        person_id = _import(auth, new_resident_id(), legacy_password_hash=legacy_hash).person_id
        auth.account.ChangePassword(
            auth_pb2.ChangePasswordRequest(old_password=password, new_password="New.pass12"),
            metadata=auth.as_person(person_id),
            timeout=10,
        )


def test_get_and_resolve_person_for_binding(auth: Auth) -> None:
    number = "11010519491231002X"
    person_id = auth.register(number, name="王五")
    person = auth.internal.GetPerson(
        auth_pb2.GetPersonRequest(person_id=person_id), timeout=10
    ).person
    assert person.identity.document.number == number
    assert person.identity.document.type == types_pb2.DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD
    assert person.identity.name == "王五"
    assert person.real_name_level == 4 and not person.overseas_restricted
    for typed in (number, number.lower(), "110105491231002"):
        resolved = auth.internal.ResolvePerson(
            auth_pb2.ResolvePersonRequest(
                document=types_pb2.Document(type=201, number=typed)  # type: ignore[arg-type]
            ),
            timeout=10,
        )
        assert (resolved.registered, resolved.person_id) == (True, person_id)
    unknown = auth.internal.ResolvePerson(
        auth_pb2.ResolvePersonRequest(
            document=types_pb2.Document(type=201, number=new_resident_id())  # type: ignore[arg-type]
        ),
        timeout=10,
    )
    assert (unknown.registered, unknown.person_id) == (False, "")
    failure = failure_of(
        auth.internal.GetPerson, auth_pb2.GetPersonRequest(person_id="f" * 32), timeout=10
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


def test_b3_require_real_name_level(auth: Auth) -> None:
    level_4 = auth.register()
    level_3 = _import(auth, new_resident_id()).person_id
    ok = auth.internal.RequireRealNameLevel(
        auth_pb2.RequireRealNameLevelRequest(person_id=level_4, min_level=4), timeout=10
    )
    assert ok.real_name_level == 4
    assert (
        auth.internal.RequireRealNameLevel(
            auth_pb2.RequireRealNameLevelRequest(person_id=level_3, min_level=3), timeout=10
        ).real_name_level
        == 3
    )
    failure = failure_of(
        auth.internal.RequireRealNameLevel,
        auth_pb2.RequireRealNameLevelRequest(person_id=level_3, min_level=4),
        timeout=10,
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "REAL_NAME_LEVEL_TOO_LOW",
    )
    for bad in (0, 5, -1):
        failure = failure_of(
            auth.internal.RequireRealNameLevel,
            auth_pb2.RequireRealNameLevelRequest(person_id=level_4, min_level=bad),
            timeout=10,
        )
        assert (failure.code, failure.metadata["field"]) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "min_level",
        )


def test_b2_b6_the_hall_lifts_restrictions_and_raises_the_level(auth: Auth) -> None:
    number = new_resident_id()
    person_id = _import(auth, number).person_id
    recorded = auth.internal.RecordOfflineRealName(
        auth_pb2.RecordOfflineRealNameRequest(identity=named(number), tax_authority=HALL),
        timeout=10,
    )
    assert recorded.person_id == person_id
    assert auth.profile(person_id).real_name_level == 4
    # Recording again (another visit to the hall) is harmless.
    again = auth.internal.RecordOfflineRealName(
        auth_pb2.RecordOfflineRealNameRequest(identity=named(number), tax_authority=HALL),
        timeout=10,
    )
    assert again.person_id == person_id
