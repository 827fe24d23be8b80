"""Personal information at rest and in logs: documents, phones, emails and names are sealed
in the database and the store, found by blind index, and never logged or put in an error."""

from __future__ import annotations

import logging

import pytest
from etax.auth.v1 import auth_pb2
from etax.common.v1 import types_pb2
from sqlalchemy import select

from etax_platform.db import Database
from services.auth.models import metadata
from tests.auth.conftest import (
    PHONE_ADD,
    Auth,
    failure_of,
    named,
    new_phone,
    new_resident_id,
)

HALL = types_pb2.TaxAuthority(code="13701020000", name="历下区税务局", province="37")


def _raw_rows(auth: Auth) -> str:
    database = Database(auth.backend.database_url)
    try:
        with database.reading() as session:
            return "\n".join(
                repr(tuple(row))
                for table in metadata.sorted_tables
                for row in session.execute(select(table)).all()
            )
    finally:
        database.dispose()


def test_personal_numbers_are_sealed_at_rest_and_absent_from_logs(
    auth: Auth, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    number, phone, second_phone = new_resident_id(), new_phone(), new_phone()
    imported_number, imported_phone = new_resident_id(), new_phone()
    passport, email = "PX1234567", "jane.doe@example.com"
    secrets = [
        number,
        phone,
        second_phone,
        imported_number,
        imported_phone,
        passport,
        email,
        "欧阳小明",
        "Jane Roe",
    ]

    person_id = auth.register(number, name="欧阳小明", phone=phone, username="xiaoming")
    auth.add_phone(person_id, second_phone)
    auth.internal.ImportLegacyPerson(
        auth_pb2.ImportLegacyPersonRequest(
            identity=named(imported_number, "欧阳小明"), phone=imported_phone, province="37"
        ),
        timeout=10,
    )
    auth.internal.RecordOfflineRealName(
        auth_pb2.RecordOfflineRealNameRequest(
            identity=named(passport, "Jane Roe", types_pb2.DOCUMENT_TYPE_FOREIGN_PASSPORT),
            tax_authority=HALL,
        ),
        timeout=10,
    )
    auth.register(
        passport,
        name="Jane Roe",
        kind=types_pb2.DOCUMENT_TYPE_OTHER_PERSONAL_DOCUMENT,
        overseas=True,
        email=email,
    )
    # A registration in progress lives in the store: sealed there too.
    pending = auth.start(new_resident_id(), "欧阳小明")
    stored = auth.store.get(f"auth:registration:{pending.registration_id}")
    assert stored is not None
    # Errors: a registered document, a wrong old password, a code sent to another phone.
    errors = [
        failure_of(auth.start, number, "欧阳小明"),
        failure_of(
            auth.account.ChangePassword,
            auth_pb2.ChangePasswordRequest(old_password="Wrong.pass1", new_password="New.pass12"),
            metadata=auth.as_person(person_id),
            timeout=10,
        ),
    ]
    verification_id, code = auth.sms.issue(new_phone(), PHONE_ADD)
    errors.append(
        failure_of(
            auth.account.AddPhone,
            auth_pb2.AddPhoneRequest(phone=phone, verification_id=verification_id, code=code),
            metadata=auth.as_person(person_id),
            timeout=10,
        )
    )

    rows = _raw_rows(auth)
    assert len(rows) > 1000  # the rows are there, sealed
    store_value = stored.value.decode()
    logs = caplog.text
    for secret in secrets:
        for variant in {secret, secret.upper(), secret.lower()}:
            assert variant not in rows, f"{variant} in the database"
            assert variant not in logs, f"{variant} in the logs"
            assert variant not in store_value, f"{variant} in the store"
            for error in errors:
                assert variant not in error.text and variant not in str(error.metadata)
    assert "rpc " in logs  # the calls were logged
    assert "Traceback" not in logs


def test_blind_indexes_find_what_the_seals_hide(auth: Auth) -> None:
    number, phone = new_resident_id(), new_phone()
    person_id = auth.register(number, phone=phone)
    resolved = auth.internal.ResolvePerson(
        auth_pb2.ResolvePersonRequest(
            document=types_pb2.Document(type=201, number=number.lower())  # type: ignore[arg-type]
        ),
        timeout=10,
    )
    assert resolved.person_id == person_id
    rows = _raw_rows(auth)
    assert number not in rows and phone not in rows
