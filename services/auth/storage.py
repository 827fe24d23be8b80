"""Persons, phones and offline collections in auth's database.

Each public method is one unit of work. Races are decided by the database: the unique
document index decides concurrent registrations, the unique phone index plus one
conditional upsert decides who holds a phone (C4), the unique username key decides
usernames, and conditions in UPDATE statements decide once-a-year changes.
"""

from __future__ import annotations

import secrets
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    Connection,
    Select,
    bindparam,
    case,
    delete,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError

from etax_platform.db import Database, ListStatement, dialect_insert
from etax_platform.documents import Document, DocumentType
from etax_platform.errors import DomainError, Reason
from etax_platform.pii import PersonalData
from services.auth.domain import PhoneRecord, with_default
from services.auth.models import Instant, offline_collections, persons, phones

_DOCUMENT = "persons.document_number"
_NAME = "persons.name"
_EMAIL = "persons.email"
_PHONE = "phones.number"
_OFFLINE_DOCUMENT = "offline_collections.document_number"
_OFFLINE_NAME = "offline_collections.name"


def new_id() -> str:
    """128 random bits in hex (the form uuid4().hex had, at a fifth of its cost)."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class PersonRecord:
    person_id: str
    document: Document
    name: str
    overseas: bool
    offline_collected: bool
    real_name_level: int
    face_verified_at: datetime | None
    email: str | None
    username: str | None
    username_changed_at: datetime | None
    password_hash: str | None
    registered_province: str
    created_at: datetime

    @property
    def overseas_restricted(self) -> bool:
        """B6: overseas and not yet collected by the hall."""
        return self.overseas and not self.offline_collected


@dataclass(frozen=True)
class LoginCandidate:
    person: PersonRecord
    # The phone a login shows masked and sends its code to (D2); None: empty (D4).
    default_phone: str | None


@dataclass(frozen=True)
class NewPerson:
    document: Document
    name: str
    overseas: bool
    real_name_level: int
    registered_province: str
    origin: Literal["registration", "legacy_import"]
    password_hash: str | None = None
    face_verified_at: datetime | None = None
    email: str | None = None
    username: str | None = None
    username_key: str | None = None


@dataclass(frozen=True)
class PhoneClaim:
    number: str
    # When the SMS check passed; None for an imported phone, which only takes a free number.
    verified_at: datetime | None
    # C3: a phone verified by SMS for itself (registration, adding it, recovering it)
    # becomes the default; a login or reset code re-affirms the default it went to.
    make_default: bool = False


@dataclass(frozen=True)
class AlsoWrite:
    """A write that goes with another unit of work (a phone a login re-affirms goes with
    its new session): in that unit's transaction (`run`), or, where the unit is one
    statement (PostgreSQL), as one data-modifying CTE of it: `cte` ("name AS (...)", with
    psycopg's `%(name)s` placeholders) and its `params`. No `cte`: transactions only."""

    run: Callable[[Connection], object]
    cte: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


# C4's claim of a checked phone by the person who passed the check, as `_claim` makes it
# (make_default off: a login re-affirms the default it went to), for one statement: the
# upsert decides who holds the number; the person's default moves to it when they have
# none left. The NOT EXISTS sees the snapshot the statement started with, which differs
# from `_claim`'s sequential view only in the claimed row itself, which is this
# person's either way.
_CLAIM_CTE = """claimed AS (
    INSERT INTO phones (id, person_id, number, number_index, verified_at, created_at)
    VALUES (%(c_id)s, %(c_person_id)s, %(c_number)s, %(c_number_index)s, %(c_verified_at)s,
            %(c_now)s)
    ON CONFLICT (number_index) DO UPDATE SET
        id = CASE WHEN phones.person_id = excluded.person_id THEN phones.id
                  ELSE excluded.id END,
        person_id = excluded.person_id,
        number = excluded.number,
        verified_at = excluded.verified_at,
        created_at = CASE WHEN phones.person_id = excluded.person_id THEN phones.created_at
                          ELSE excluded.created_at END
    WHERE phones.verified_at IS NULL OR phones.verified_at <= excluded.verified_at
    RETURNING id, person_id
), claimed_default AS (
    UPDATE persons SET default_phone_id = claimed.id
    FROM claimed
    WHERE persons.id = %(c_person_id)s AND claimed.person_id = %(c_person_id)s
      AND (persons.default_phone_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM phones
          WHERE phones.id = persons.default_phone_id AND phones.person_id = persons.id))
)"""


class AccountStore:
    def __init__(self, database: Database, personal_data: PersonalData) -> None:
        self._db = database
        self._pd = personal_data

    # --- indexes ---------------------------------------------------------------------------

    def document_index(self, document: Document) -> str:
        return document.blind_index(self._pd)

    def phone_index(self, number: str) -> str:
        return self._pd.blind_index(number, "phone")

    def email_index(self, email: str) -> str:
        return self._pd.blind_index(email, "email")

    def recipient_index(self, recipient: str) -> str:
        """The blind index of a code's recipient: an email (B6) or a phone."""
        return self.email_index(recipient) if "@" in recipient else self.phone_index(recipient)

    # --- reading -----------------------------------------------------------------------------

    def person(self, person_id: str) -> PersonRecord | None:
        with self._db.reading() as session:
            row = session.execute(_person_query().where(persons.c.id == person_id)).first()
        return None if row is None else self._person(row)

    def person_id_for_document(self, document: Document) -> str | None:
        with self._db.reading() as session:
            return session.scalar(
                select(persons.c.id).where(
                    persons.c.document_index == self.document_index(document)
                )
            )

    def is_offline_collected(self, document: Document) -> bool:
        with self._db.reading() as session:
            return bool(
                session.scalar(
                    select(
                        exists().where(
                            offline_collections.c.document_index == self.document_index(document)
                        )
                    )
                )
            )

    def username_owner(self, username_key: str) -> str | None:
        with self._db.reading() as session:
            return session.scalar(
                select(persons.c.id).where(persons.c.username_key == username_key)
            )

    def any_person_with_document_index(self, indexes: list[str]) -> bool:
        with self._db.reading() as session:
            return bool(
                session.scalar(select(exists().where(persons.c.document_index.in_(indexes))))
            )

    def login_candidates(
        self, *, document_indexes: list[str], username_key: str | None, phone_index: str | None
    ) -> list[LoginCandidate]:
        """Persons an account can name (C2, C3), each with the phone the login shows (D2),
        in one prepared statement: login step 1 makes no other round trip."""
        keys = {"username_key": username_key, "phone_index": phone_index}
        rows = map(_login_candidate_row, _LOGIN_CANDIDATES.run(self._db, document_indexes, keys))
        return [
            LoginCandidate(
                self._person(row),
                None if row.default_phone is None else self._pd.decrypt(row.default_phone, _PHONE),
            )
            for row in rows
        ]

    def default_phone(self, person_id: str) -> str | None:
        """The phone a login or reset code goes to: the person's default, now (C3, C4, D2)."""
        with self._db.reading() as session:
            sealed = session.scalar(
                select(_default_phone_number()).where(persons.c.id == person_id)
            )
        return None if sealed is None else self._pd.decrypt(sealed, _PHONE)

    def phones(self, person_id: str) -> list[PhoneRecord]:
        with self._db.reading() as session:
            chosen = session.scalar(
                select(persons.c.default_phone_id).where(persons.c.id == person_id)
            )
            rows = session.execute(
                select(phones.c.id, phones.c.number, phones.c.verified_at).where(
                    phones.c.person_id == person_id
                )
            ).all()
        return with_default(
            [
                PhoneRecord(row.id, self._pd.decrypt(row.number, _PHONE), row.verified_at)
                for row in rows
            ],
            chosen,
        )

    def holder_of_phone(self, number: str) -> str | None:
        with self._db.reading() as session:
            return session.scalar(
                select(phones.c.person_id).where(phones.c.number_index == self.phone_index(number))
            )

    # --- persons -------------------------------------------------------------------------------

    def create_person(
        self, new: NewPerson, phone: PhoneClaim | None, now: datetime
    ) -> tuple[str, PhoneRecord | None]:
        """Inserts the person (and claims the phone) in one transaction.

        ALREADY_REGISTERED when the document is registered, USERNAME_TAKEN when the
        username is; the unique indexes decide, whoever came first.
        """
        person_id = new_id()
        try:
            with self._db.transaction() as session:
                session.execute(
                    persons.insert().values(
                        id=person_id,
                        document_type=int(new.document.type),
                        document_number=self._pd.encrypt(new.document.number, _DOCUMENT),
                        document_index=self.document_index(new.document),
                        name=self._pd.encrypt(new.name, _NAME),
                        overseas=new.overseas,
                        real_name_level=new.real_name_level,
                        face_verified_at=new.face_verified_at,
                        email=None if new.email is None else self._pd.encrypt(new.email, _EMAIL),
                        email_index=None if new.email is None else self.email_index(new.email),
                        username=new.username,
                        username_key=new.username_key,
                        username_changed_at=None,
                        password_hash=new.password_hash,
                        password_changed_at=None if new.password_hash is None else now,
                        registered_province=new.registered_province,
                        origin=new.origin,
                        created_at=now,
                        updated_at=now,
                    )
                )
                held = None if phone is None else self._claim(session, person_id, phone, now)
        except IntegrityError:
            if self.person_id_for_document(new.document) is not None:
                raise DomainError(Reason.ALREADY_REGISTERED) from None
            if new.username_key is not None and self.username_owner(new.username_key):
                raise DomainError(Reason.USERNAME_TAKEN, metadata={"field": "username"}) from None
            raise
        return person_id, held

    def set_password(
        self, person_id: str, expected_hash: str, new_hash: str, now: datetime
    ) -> bool:
        """Replaces the hash only if it is still the one the caller checked."""
        with self._db.transaction() as session:
            result = session.execute(
                update(persons)
                .where(persons.c.id == person_id, persons.c.password_hash == expected_hash)
                .values(password_hash=new_hash, password_changed_at=now, updated_at=now)
            )
        return _count(result) == 1

    def replace_password_hash(self, person_id: str, expected_hash: str, new_hash: str) -> bool:
        """The same password under new hash parameters (not a password change)."""
        with self._db.transaction() as session:
            result = session.execute(
                update(persons)
                .where(persons.c.id == person_id, persons.c.password_hash == expected_hash)
                .values(password_hash=new_hash)
            )
        return _count(result) == 1

    def set_username(
        self, person_id: str, display: str, key: str, now: datetime, year_start: datetime
    ) -> Literal["set", "too_soon", "unknown"]:
        """C2 decided in one UPDATE: adding is free; a change needs the last one to be before
        this CST calendar year. USERNAME_TAKEN when the unique key says so."""
        is_change = persons.c.username.is_not(None)
        try:
            with self._db.transaction() as session:
                result = session.execute(
                    update(persons)
                    .where(
                        persons.c.id == person_id,
                        or_(
                            persons.c.username.is_(None),
                            persons.c.username == display,
                            persons.c.username_changed_at.is_(None),
                            persons.c.username_changed_at < year_start,
                        ),
                    )
                    .values(
                        username=display,
                        username_key=key,
                        # Setting the same name again is no change.
                        username_changed_at=case(
                            (persons.c.username == display, persons.c.username_changed_at),
                            (is_change, literal(now, Instant())),
                            else_=None,
                        ),
                        updated_at=now,
                    )
                )
        except IntegrityError:
            raise DomainError(Reason.USERNAME_TAKEN, metadata={"field": "username"}) from None
        if _count(result) == 1:
            return "set"
        return "unknown" if self.person(person_id) is None else "too_soon"

    def raise_level(self, person_id: str, level: int, face_verified_at: datetime) -> int:
        """B3: never lowers a level; returns the level now stored."""
        with self._db.transaction() as session:
            session.execute(
                update(persons)
                .where(persons.c.id == person_id)
                .values(
                    real_name_level=_raised_level(level),
                    face_verified_at=face_verified_at,
                    updated_at=face_verified_at,
                )
            )
            stored = session.scalar(
                select(persons.c.real_name_level).where(persons.c.id == person_id)
            )
        if stored is None:
            raise DomainError(Reason.NOT_FOUND, metadata={"field": "person_id"})
        return int(stored)

    # --- offline real-name collection (B2, B5, B6) ------------------------------------------

    def record_offline_collection(
        self,
        document: Document,
        name: str,
        tax_authority: tuple[str, str, str],
        now: datetime,
        level: int,
    ) -> str | None:
        """Records (or refreshes) the hall's collection; an already registered person gets
        `level` (the hall checked them in person) and loses the overseas restriction."""
        index = self.document_index(document)
        code, authority_name, province = tax_authority
        values: dict[str, Any] = {
            "document_index": index,
            "document_type": int(document.type),
            "document_number": self._pd.encrypt(document.number, _OFFLINE_DOCUMENT),
            "name": self._pd.encrypt(name, _OFFLINE_NAME),
            "tax_authority_code": code,
            "tax_authority_name": authority_name,
            "province": province,
            "collected_at": now,
        }
        with self._db.transaction() as session:
            insert = dialect_insert(session, offline_collections).values(**values)
            session.execute(
                insert.on_conflict_do_update(
                    index_elements=[offline_collections.c.document_index],
                    set_={k: v for k, v in values.items() if k != "document_index"},
                )
            )
            person_id: str | None = session.scalar(
                update(persons)
                .where(persons.c.document_index == index)
                .values(
                    real_name_level=_raised_level(level),
                    updated_at=now,
                )
                .returning(persons.c.id)
            )
        return person_id

    # --- phones (C3, C4) -------------------------------------------------------------------

    def claim_phone(self, person_id: str, claim: PhoneClaim, now: datetime) -> PhoneRecord | None:
        """C4: the person who passed the most recent SMS check on the number holds it.

        None when a more recent check by someone else already holds it.
        """
        with self._db.transaction() as session:
            return self._claim(session, person_id, claim, now)

    def claim_phone_in(
        self, session: Connection, person_id: str, claim: PhoneClaim, now: datetime
    ) -> PhoneRecord | None:
        """claim_phone inside the caller's transaction (a login re-affirms its phone)."""
        return self._claim(session, person_id, claim, now)

    def phone_claim_with(self, person_id: str, claim: PhoneClaim, now: datetime) -> AlsoWrite:
        """claim_phone as a write that goes with another unit of work (AlsoWrite)."""

        def run(session: Connection) -> object:
            return self._claim(session, person_id, claim, now)

        if claim.verified_at is None or claim.make_default:
            return AlsoWrite(run)
        return AlsoWrite(
            run,
            _CLAIM_CTE,
            {
                "c_id": new_id(),
                "c_person_id": person_id,
                "c_number": self._pd.encrypt(claim.number, _PHONE),
                "c_number_index": self.phone_index(claim.number),
                "c_verified_at": claim.verified_at,
                "c_now": now,
            },
        )

    def recover_phone_in(
        self, session: Connection, person_id: str, number: str, verified_at: datetime, now: datetime
    ) -> PhoneRecord | None:
        """C6: the recovered number replaces the lost default phone: it becomes the default,
        and the lost one is removed (it no longer logs in and gets no codes). None when a
        more recent check by someone else holds the number (C4)."""
        lost = session.scalar(select(_default_phone(phones.c.id)).where(persons.c.id == person_id))
        held = self._claim(session, person_id, PhoneClaim(number, verified_at, True), now)
        if held is not None and lost is not None and lost != held.phone_id:
            session.execute(
                delete(phones).where(phones.c.id == lost, phones.c.person_id == person_id)
            )
        return held

    def reset_password_in(
        self, session: Connection, person_id: str, new_hash: str, now: datetime
    ) -> bool:
        """Forgot password (C5): the new hash, whatever the old one was."""
        result = session.execute(
            update(persons)
            .where(persons.c.id == person_id)
            .values(password_hash=new_hash, password_changed_at=now, updated_at=now)
        )
        return _count(result) == 1

    def _claim(
        self, session: Connection, person_id: str, claim: PhoneClaim, now: datetime
    ) -> PhoneRecord | None:
        """One statement decides who holds the number; it touches only the phone's row (and
        the claimant's own row for the default), so concurrent claims cannot deadlock."""
        insert = dialect_insert(session, phones).values(
            id=new_id(),
            person_id=person_id,
            number=self._pd.encrypt(claim.number, _PHONE),
            number_index=self.phone_index(claim.number),
            verified_at=claim.verified_at,
            created_at=now,
        )
        returning = (phones.c.id, phones.c.person_id, phones.c.verified_at)
        if claim.verified_at is None:
            # An imported phone never takes a number someone holds.
            statement: Any = insert.on_conflict_do_nothing(
                index_elements=[phones.c.number_index]
            ).returning(*returning)
        else:
            ours = phones.c.person_id == insert.excluded.person_id
            # The row moves to the newer check (ties: the later writer). The upsert locks
            # the row and re-reads it, so two holders can never exist. A moved phone gets a
            # new id: the previous holder's references to it (their default) lapse.
            statement = insert.on_conflict_do_update(
                index_elements=[phones.c.number_index],
                set_={
                    "id": case((ours, phones.c.id), else_=insert.excluded.id),
                    "person_id": insert.excluded.person_id,
                    "number": insert.excluded.number,
                    "verified_at": insert.excluded.verified_at,
                    "created_at": case(
                        (ours, phones.c.created_at), else_=insert.excluded.created_at
                    ),
                },
                where=or_(
                    phones.c.verified_at.is_(None),
                    phones.c.verified_at <= insert.excluded.verified_at,
                ),
            ).returning(*returning)
        row = session.execute(statement).first()
        if row is None or row.person_id != person_id:
            return None
        # The new phone becomes the default when asked, or when the person has none left
        # (their first phone, or the chosen one was removed or taken).
        becomes_default = (
            true()
            if claim.make_default
            else or_(
                persons.c.default_phone_id.is_(None),
                ~exists().where(
                    phones.c.id == persons.c.default_phone_id, phones.c.person_id == persons.c.id
                ),
            )
        )
        session.execute(
            update(persons)
            .where(persons.c.id == person_id, becomes_default)
            .values(default_phone_id=row.id)
        )
        return PhoneRecord(row.id, claim.number, row.verified_at, is_default=claim.make_default)

    def remove_phone(self, person_id: str, phone_id: str) -> bool:
        with self._db.transaction() as session:
            result = session.execute(
                delete(phones).where(phones.c.id == phone_id, phones.c.person_id == person_id)
            )
        return _count(result) == 1

    def set_default_phone(self, person_id: str, phone_id: str) -> bool:
        held = exists().where(phones.c.id == phone_id, phones.c.person_id == person_id)
        with self._db.transaction() as session:
            result = session.execute(
                update(persons)
                .where(persons.c.id == person_id, held)
                .values(default_phone_id=phone_id)
            )
        return _count(result) == 1

    # --- mapping ------------------------------------------------------------------------

    def _person(self, row: Any) -> PersonRecord:
        return PersonRecord(
            person_id=row.id,
            document=Document(
                DocumentType(row.document_type), self._pd.decrypt(row.document_number, _DOCUMENT)
            ),
            name=self._pd.decrypt(row.name, _NAME),
            overseas=row.overseas,
            offline_collected=bool(row.offline_collected),
            real_name_level=row.real_name_level,
            face_verified_at=row.face_verified_at,
            email=None if row.email is None else self._pd.decrypt(row.email, _EMAIL),
            username=row.username,
            username_changed_at=row.username_changed_at,
            password_hash=row.password_hash,
            registered_province=row.registered_province,
            created_at=row.created_at,
        )


def _default_phone(column: Any) -> Any:
    """A column of a person's default phone (domain.with_default in SQL): the chosen one
    while held, else the one verified most recently."""
    chosen = (
        select(column)
        .where(phones.c.id == persons.c.default_phone_id, phones.c.person_id == persons.c.id)
        .scalar_subquery()
    )
    latest = (
        select(column)
        .where(phones.c.person_id == persons.c.id)
        .order_by(phones.c.verified_at.desc().nulls_last(), phones.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return func.coalesce(chosen, latest)


def _default_phone_number() -> Any:
    """The sealed number of a person's default phone."""
    return _default_phone(phones.c.number)


def _raised_level(level: int) -> Any:
    """B3: the stored real-name level raised to `level`, never lowered."""
    return case((persons.c.real_name_level < level, level), else_=persons.c.real_name_level)


def _person_query() -> Any:
    collected = (
        select(offline_collections.c.document_index)
        .where(offline_collections.c.document_index == persons.c.document_index)
        .exists()
    )
    return select(*persons.c, collected.label("offline_collected"))


def login_candidates_query(document_indexes: list[str]) -> Select[Any]:
    """Login step 1's query, the document indexes (one per PII key held) named by
    `document_indexes`, each a parameter of its own. A None key compares as NULL and no
    index as no condition, so an account that names no person one way matches no row
    that way."""
    named = [bindparam(name, type_=persons.c.document_index.type) for name in document_indexes]
    query: Select[Any] = (
        _person_query()
        .add_columns(_default_phone_number().label("default_phone"))
        .where(
            or_(
                persons.c.document_index.in_(named) if named else false(),
                persons.c.username_key
                == bindparam("username_key", type_=persons.c.username_key.type),
                persons.c.id
                == select(phones.c.person_id)
                .where(
                    phones.c.number_index
                    == bindparam("phone_index", type_=phones.c.number_index.type)
                )
                .scalar_subquery(),
            )
        )
    )
    return query


# Built once per number of keys (login step 1 is hot); typed: its instants come back in
# China Standard Time on PostgreSQL too.
_LOGIN_CANDIDATES = ListStatement(login_candidates_query, "document_index", typed=True)
# Its rows by column name (the columns are the same for any number of keys).
_login_candidate_row: Callable[[tuple[Any, ...]], Any] = namedtuple(  # type: ignore[attr-defined]
    "LoginCandidateRow", [str(c.key) for c in login_candidates_query([]).selected_columns]
)._make


def _count(result: Any) -> int:
    return int(result.rowcount)
