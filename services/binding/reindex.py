"""`python -m services.binding.reindex`: moves binding's blind indexes to the active key.

After a rotation (a new key added to ETAX_BINDING_INDEX_KEYS and made active with
ETAX_BINDING_INDEX_ACTIVE_KEY_ID, the old one kept), every replica already finds a
person's rows under both keys; this moves the rows it can to the active key, so the old
key can be dropped:

- relations keep the document sealed: their index is computed again;
- person_documents: auth tells the person's document again (InternalAuthService.GetPerson);
- report people and agents (project_people, agency_agents, agreement_agents) keep only an
  index: a row moves when the same document's old index is known from the two above. A
  row of a document binding never saw otherwise (an agent not registered yet, say) stays
  under its key until the hall submits that form again (a new form is written under the
  active key) or the person shows up.

It prints, per key, how many rows are left under it; a key with none left may be dropped.
Safe to run while the service runs, and again: each document's rows move in a transaction
of their own; a link row whose twin is already under the active key is deleted, and a
relation whose live twin is (a race in theory only) stays, found under its older key.
A replica that meets a person after a rotation moves that person's rows itself.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Table, func, select, update

from etax_platform.clients import open_channel
from etax_platform.db import Database
from etax_platform.documents import Document
from etax_platform.errors import DomainError
from etax_platform.keyrings import HmacKeyring
from etax_platform.pii import PersonalData
from services.binding.app import MIGRATIONS
from services.binding.models import (
    agency_agents,
    agreement_agents,
    person_documents,
    project_people,
    relations,
)
from services.binding.service import INDEX_PURPOSE, Auth, document_message, move_rows
from services.binding.settings import BindingSettings

log = logging.getLogger("etax.binding.reindex")

INDEXED_TABLES: tuple[Table, ...] = (
    relations,
    person_documents,
    project_people,
    agency_agents,
    agreement_agents,
)
# Encryption context of a relation's document number (services.binding.service).
_DOCUMENT_NUMBER = "binding.relations.document_number"


@dataclass
class Report:
    moved: Counter[str] = field(default_factory=Counter)
    # Rows left under each key, by key id and table (after the run).
    left: dict[str, Counter[str]] = field(default_factory=dict)

    def droppable(self, keyring: HmacKeyring) -> list[str]:
        """Older keys no row is under any more."""
        return [k for k in keyring.keys if k != keyring.active_id and not self.left.get(k)]

    def lines(self, keyring: HmacKeyring) -> list[str]:
        out = [f"active key {keyring.active_id}; moved: {dict(self.moved) or 'nothing'}"]
        for key_id, tables in sorted(self.left.items()):
            if key_id != keyring.active_id:
                state = "not in the keyring!" if key_id not in keyring.keys else "still needed"
                out.append(f"key {key_id} ({state}): rows left {dict(tables)}")
        for key_id in self.droppable(keyring):
            out.append(f"key {key_id}: no rows left, it may be dropped")
        return out


class Reindexer:
    """Moves every document it can learn (sealed in relations, or from auth for
    person_documents) with all its rows (`service.move_rows`)."""

    def __init__(
        self,
        database: Database,
        keyring: HmacKeyring,
        personal_data: PersonalData,
        auth: Auth | None,
    ) -> None:
        self._db = database
        self._keyring = keyring
        self._personal_data = personal_data
        self._auth = auth

    def run(self) -> Report:
        report = Report()
        for document in self._documents():
            digests = list(
                self._keyring.digests(INDEX_PURPOSE, document_message(document)).values()
            )
            active, older = digests[0], digests[1:]
            with self._db.transaction() as session:
                report.moved.update(move_rows(session, older, active, self._keyring.active_id))
                if session.execute(
                    update(person_documents)
                    .where(person_documents.c.document_index.in_(older))
                    .values(document_index=active, index_key_id=self._keyring.active_id)
                ).rowcount:
                    report.moved[person_documents.name] += 1
        report.left = self.left()
        return report

    def left(self) -> dict[str, Counter[str]]:
        """Rows by key id and table."""
        found: dict[str, Counter[str]] = {}
        with self._db.reading() as session:
            for table in INDEXED_TABLES:
                rows = session.execute(
                    select(table.c.index_key_id, func.count()).group_by(table.c.index_key_id)
                )
                for key_id, count in rows:
                    found.setdefault(key_id, Counter())[table.name] = count
        return found

    def _documents(self) -> Iterator[Document]:
        """The documents of rows under older keys that binding can learn."""
        active = self._keyring.active_id
        with self._db.reading() as session:
            sealed = session.execute(
                select(relations.c.document_type, relations.c.document_number_encrypted)
                .where(relations.c.index_key_id != active)
                .distinct()
            ).all()
            persons = session.scalars(
                select(person_documents.c.person_id).where(
                    person_documents.c.index_key_id != active
                )
            ).all()
        for document_type, encrypted in sealed:
            number = self._personal_data.decrypt(encrypted, _DOCUMENT_NUMBER)
            yield Document(document_type, number)
        for person_id in persons:
            if self._auth is None:
                continue
            try:
                yield self._auth.person(person_id).document
            except DomainError as error:
                log.warning("auth did not tell a person's document: %s", error.reason.value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.binding.reindex")
    parser.add_argument("--report", action="store_true", help="only count the rows under each key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = BindingSettings()
    keyring = settings.index_keyring()
    database = Database(settings.database_url_for("binding"), settings.database_pool())
    channel = open_channel(settings.auth_target)
    try:
        database.migrate(MIGRATIONS)
        reindexer = Reindexer(
            database,
            keyring,
            PersonalData(settings.platform.keyring(blind_index=False)),
            Auth(channel, settings.auth_timeout_seconds),
        )
        report = Report(left=reindexer.left()) if args.report else reindexer.run()
    finally:
        channel.close()
        database.dispose()
    print("\n".join(report.lines(keyring)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
