"""One secret, one purpose (DESIGN.md, "Beyond one machine"): binding finds persons by a
blind index under keys of its own (ETAX_BINDING_INDEX_KEYS), not auth's PII index key, and
rotates them on its own: rows of an older key stay found, new rows use the active key,
`services.binding.reindex` moves what it can and says which keys may be dropped."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import timedelta

import grpc
import pytest
from alembic import command
from alembic.config import Config
from etax.binding.v1 import binding_pb2_grpc
from etax.common.v1.types_pb2 import Entry, Role
from sqlalchemy import Table, select, text

from etax_platform.clock import ManualClock
from etax_platform.db import Database
from etax_platform.documents import Document, document_blind_index
from etax_platform.errors import Reason
from etax_platform.keyrings import HmacKeyring
from etax_platform.pii import Keyring, PersonalData
from etax_platform.tokens import SigningKey, TokenIssuer
from services.binding.app import MIGRATIONS, build
from services.binding.models import agency_agents, person_documents, relations
from services.binding.reindex import Reindexer
from services.binding.service import INDEX_PURPOSE, Auth, document_message
from services.binding.settings import BindingSettings
from tests.binding.fake_auth import FakeAuth
from tests.binding.support import INSPECTION, SHANDONG, Binding, Person, expect
from tests.harness.numbers import uscc

AGENT = Entry.ENTRY_AGENT
Start = Callable[[HmacKeyring], contextlib.AbstractContextManager[Binding]]


@pytest.fixture
def start(
    settings: BindingSettings,
    fake_auth: FakeAuth,
    signing_key: SigningKey,
    clock: ManualClock,
    personal_data: PersonalData,
) -> Start:
    """Binding with given index keys, on the test's database (one after the other)."""

    @contextlib.contextmanager
    def running(keys: HmacKeyring) -> Iterator[Binding]:
        auth_channel = grpc.insecure_channel(fake_auth.address)
        host = build(
            settings,
            clock=clock,
            auth_channel=auth_channel,
            personal_data=personal_data,
            index_keys=keys,
        ).start()
        channel = grpc.insecure_channel(host.address)
        try:
            yield Binding(
                host=host,
                public=binding_pb2_grpc.BindingServiceStub(channel),
                internal=binding_pb2_grpc.InternalBindingServiceStub(channel),
                auth=fake_auth,
                issuer=TokenIssuer(signing_key, clock),
                clock=clock,
            )
        finally:
            channel.close()
            host.stop(grace=0)
            auth_channel.close()

    return running


@pytest.fixture
def database(settings: BindingSettings) -> Iterator[Database]:
    db = Database(settings.database_url_for("binding"))
    yield db
    db.dispose()


def _document(person: Person) -> Document:
    return Document(person.document.type, person.document.number)


def _key_ids(database: Database, table: Table, keys: HmacKeyring, person: Person) -> set[str]:
    """The key ids of the table's rows that name the person (under any key held)."""
    indexes = list(keys.digests(INDEX_PURPOSE, document_message(_document(person))).values())
    with database.reading() as session:
        return set(
            session.scalars(select(table.c.index_key_id).where(table.c.document_index.in_(indexes)))
        )


def _project(binding: Binding, person: Person, number: str) -> str:
    identity = binding.check(
        person,
        entry=Entry.ENTRY_SPECIFIC_SUBJECT,
        subject_type=INSPECTION,
        subject_number=number,
        province=SHANDONG,
    )
    return str(identity.project_number)


def _index(keys: HmacKeyring, key_id: str, person: Person) -> str:
    return keys.digest(key_id, INDEX_PURPOSE, document_message(_document(person)))


def test_binding_indexes_documents_with_a_key_of_its_own_not_auths(
    start: Start,
    database: Database,
    personal_data: PersonalData,
) -> None:
    keys = HmacKeyring.generate("b1")
    with start(keys) as binding:
        boss = binding.person("张总")
        binding.bound_enterprise(uscc(1), boss)
    with database.reading() as session:
        stored = session.execute(select(relations.c.document_index, relations.c.index_key_id)).one()
    assert tuple(stored) == (_index(keys, "b1", boss), "b1")
    assert stored.document_index != _document(boss).blind_index(personal_data)


def test_the_platforms_old_index_key_as_a_binding_key_gives_the_old_indexes() -> None:
    """The migration path (v0002): rows stored before are under key id "pii"; the old
    ETAX_PII_INDEX_KEY given to binding under that id finds them."""
    platform = Keyring.generate()
    assert platform.index_key is not None
    legacy = HmacKeyring({"pii": platform.index_key}, "pii")
    document = Document(1, "370102199001011234")
    old = document_blind_index(PersonalData(platform), document.type, document.number)
    assert legacy.digest("pii", INDEX_PURPOSE, document_message(document)) == old


def test_a_rotation_keeps_every_row_found_and_reindex_moves_them_to_the_new_key(
    start: Start,
    database: Database,
    personal_data: PersonalData,
    fake_auth: FakeAuth,
) -> None:
    first = HmacKeyring.generate("b1")
    code, agency, client = uscc(11), uscc(12), uscc(13)
    with start(first) as binding:
        boss, handler, agent = (
            binding.person("张总"),
            binding.person("李四"),
            binding.person("王五"),
        )
        # Listed in both agency forms but not registered: binding never sees its document.
        stranger = binding.person("赵六", registered=False)
        binding.bound_enterprise(code, boss)
        (absent,) = binding.bound_enterprise(client, binding.person("钱七")).relations
        binding.record_project(code, "XM-1", SHANDONG, handlers=(handler,))
        binding.agency_information(agency, agent, stranger)
        now = binding.clock.now()
        binding.agreement(agency, client, (agent, stranger), now, now + timedelta(days=365))
        assert binding.check(agent, entry=AGENT, agency_code=agency, client_code=client)
        officer = binding.person("孙八")
        pending = binding.add(code, boss, officer)

    rotated = first.rotated("b2")
    with start(rotated) as binding:
        # Everything of the older key is still found ...
        assert binding.check_enterprise(boss, code).role == Role.ROLE_LEGAL_REPRESENTATIVE
        assert binding.check(agent, entry=AGENT, agency_code=agency, client_code=client)
        assert _project(binding, handler, "XM-1") == "XM-1"
        assert [r.relation_id for r in binding.pending(officer)] == [pending.relation_id]
        # ... a live relation under it still counts (no second one under the new key) ...
        expect(lambda: binding.add(code, boss, officer), Reason.STATE_CONFLICT)
        again = binding.register_enterprise(code, boss)
        assert [r.state for r in again.relations] == [2]  # the same, still ACTIVE
        # ... and new rows use the active key: one form resubmitted, the other not yet.
        newcomer = binding.person("周九")
        added = binding.add(code, boss, newcomer)
        binding.agency_information(agency, agent, stranger)
        assert binding.check(agent, entry=AGENT, agency_code=agency, client_code=client)
    keys_of = {row.relation_id: row.index_key_id for row in _relation_keys(database)}
    assert keys_of[added.relation_id] == "b2"
    # A person who showed up since has all their rows moved; one who did not, not yet.
    assert keys_of[pending.relation_id] == "b2"
    assert keys_of[absent.relation_id] == "b1"
    assert _key_ids(database, agency_agents, rotated, agent) == {"b2"}

    channel = grpc.insecure_channel(fake_auth.address)
    try:
        reindexer = Reindexer(database, rotated, personal_data, Auth(channel, 5))
        report = reindexer.run()
    finally:
        channel.close()
    # Relations and persons move (those who showed up moved already); the agreement's row
    # of the stranger cannot (binding has only ever seen its index), so b1 is still needed.
    assert report.moved["relations"] >= 1
    assert report.left["b1"] == {"agreement_agents": 1}
    assert {row.index_key_id for row in _relation_keys(database)} == {"b2"}
    assert report.droppable(rotated) == []
    assert _key_ids(database, person_documents, rotated, boss) == {"b2"}

    with start(rotated.without("b1")) as binding:
        assert binding.check_enterprise(boss, code).role == Role.ROLE_LEGAL_REPRESENTATIVE
        assert binding.check(agent, entry=AGENT, agency_code=agency, client_code=client)
        assert _project(binding, handler, "XM-1") == "XM-1"
        assert [r.relation_id for r in binding.pending(officer)] == [pending.relation_id]
        # The hall submits the agreement again: now nothing is left under b1.
        binding.agreement(agency, client, (agent, stranger), now, now + timedelta(days=365))
    assert Reindexer(database, rotated, personal_data, None).run().droppable(rotated) == ["b1"]


def _relation_keys(database: Database) -> list[object]:
    with database.reading() as session:
        return list(session.execute(select(relations.c.relation_id, relations.c.index_key_id)))


def test_v0002_labels_the_rows_indexed_before_with_the_platforms_key_pii(
    settings: BindingSettings,
) -> None:
    database = Database(settings.database_url_for("binding"))
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with database.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
            connection.execute(
                text(
                    "INSERT INTO person_documents (person_id, document_index, created_at)"
                    " VALUES ('p1', :index, 0)"
                ),
                {"index": "a" * 64},
            )
        database.migrate(MIGRATIONS)
        with database.reading() as session:
            assert session.execute(select(person_documents)).one()._mapping["index_key_id"] == (
                "pii"
            )
    finally:
        database.dispose()


def test_an_existing_deployment_moves_from_the_platforms_index_key_to_bindings_own(
    start: Start, database: Database, personal_data: PersonalData, keyring: Keyring
) -> None:
    """What binding stored with ETAX_PII_INDEX_KEY (key id "pii") is found with that key
    given as binding's older key, and moved by reindex; then the key is dropped."""
    assert keyring.index_key is not None
    legacy = HmacKeyring({"pii": keyring.index_key}, "pii")
    code = uscc(21)
    with start(legacy) as binding:
        boss = binding.person("张总")
        binding.bound_enterprise(code, boss)
    with database.reading() as session:
        stored = session.scalar(select(relations.c.document_index))
    assert stored == _document(boss).blind_index(personal_data)  # as binding did before
    own = HmacKeyring({**legacy.keys, "b1": HmacKeyring.generate("b1").keys["b1"]}, "b1")
    assert Reindexer(database, own, personal_data, None).run().droppable(own) == ["pii"]
    with start(own.without("pii")) as binding:
        assert binding.check_enterprise(boss, code).role == Role.ROLE_LEGAL_REPRESENTATIVE
