"""Login step 1's one statement (C2, C3, D2) on SQLite and PostgreSQL: the persons an
account names by document, username or phone, read alike on both databases (on
PostgreSQL a prepared statement on the driver, its instants in China Standard Time)."""

from __future__ import annotations

from datetime import datetime, timedelta

from etax_platform.clock import CST
from etax_platform.documents import Document, DocumentType
from services.auth.storage import AccountStore, NewPerson, PhoneClaim
from tests.auth.conftest import new_phone, new_resident_id

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=CST)


def _register(accounts: AccountStore, phone: str) -> tuple[str, Document]:
    document = Document(DocumentType.RESIDENT_IDENTITY_CARD, new_resident_id())
    new = NewPerson(
        document=document,
        name="张三",
        overseas=False,
        real_name_level=4,
        registered_province="37",
        origin="registration",
    )
    person_id, _ = accounts.create_person(new, PhoneClaim(phone, T0), T0)
    return person_id, document


def test_c2_c3_an_account_names_its_person_by_document_username_or_phone(
    accounts: AccountStore,
) -> None:
    phone = new_phone()
    person_id, document = _register(accounts, phone)
    accounts.set_username(person_id, "Zhang3", "zhang3", T0, T0 - timedelta(days=1))
    _register(accounts, new_phone())  # someone else, named by none of these
    by_document = accounts.login_candidates(
        document_indexes=[accounts.document_index(document)], username_key=None, phone_index=None
    )
    by_username = accounts.login_candidates(
        document_indexes=[], username_key="zhang3", phone_index=None
    )
    by_phone = accounts.login_candidates(
        document_indexes=[], username_key=None, phone_index=accounts.phone_index(phone)
    )
    # Two indexes (a key rotation): one names nobody registered under it here.
    by_either_key = accounts.login_candidates(
        document_indexes=["0" * 64, accounts.document_index(document)],
        username_key=None,
        phone_index=None,
    )
    for found in (by_document, by_username, by_phone, by_either_key):
        [candidate] = found
        person = candidate.person
        assert person.person_id == person_id
        assert person.document == document and person.name == "张三"
        assert person.username == "Zhang3"
        # D2: the phone the login shows, decrypted.
        assert candidate.default_phone == phone
        # Instants in China Standard Time on both databases, as every other read.
        assert person.created_at == T0
        assert person.created_at.utcoffset() == timedelta(hours=8)
        assert person.username_changed_at is None
    nobody = accounts.login_candidates(document_indexes=[], username_key=None, phone_index=None)
    assert nobody == []
