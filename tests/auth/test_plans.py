"""Login step 1's one query (C2, C3, D2) on PostgreSQL: index lookups only, in the plan
for given values and in the generic plan psycopg's automatic preparing can switch to, for
a document under one key of the index keyring and under two (a rotation). A scan of
persons would make every login slower with every person registered. Plans, not timings,
so the test holds on a busy machine."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg

from services.auth import storage
from services.auth.app import MIGRATIONS
from tests.harness.plans import analysed_database, plans, scanned_tables
from tests.harness.servers import PostgresServer

ROWS = 3000
AT = "2026-01-01T00:00:00Z"


def _index(i: int) -> str:
    return f"{i:064x}"


def _phone_index(i: int) -> str:
    return _index(i)[::-1]


@pytest.fixture(scope="module")
def conninfo(postgres: PostgresServer) -> str:
    return analysed_database(postgres, MIGRATIONS, _fill)


def _fill(connection: psycopg.Connection[object]) -> None:
    """Per i: a person with a username and a default phone; every other one collected
    offline (B2)."""
    cursor = connection.cursor()
    columns = (
        "id, document_type, document_number, document_index, name, overseas, "
        "real_name_level, username_key, registered_province, origin, created_at, "
        "updated_at, default_phone_id"
    )
    with cursor.copy(f"COPY persons ({columns}) FROM STDIN") as copy:  # type: ignore[arg-type]
        for i in range(ROWS):
            person = (f"p{i}", 1, "x", _index(i), "x", False, 1, f"u{i}", "37")
            copy.write_row((*person, "registration", AT, AT, f"ph{i}"))
    with cursor.copy(
        "COPY phones (id, person_id, number, number_index, created_at) FROM STDIN"
    ) as copy:
        for i in range(ROWS):
            copy.write_row((f"ph{i}", f"p{i}", "x", _phone_index(i), AT))
    offline = (
        "document_index, document_type, document_number, name, tax_authority_code, "
        "tax_authority_name, province, collected_at"
    )
    with cursor.copy(f"COPY offline_collections ({offline}) FROM STDIN") as copy:  # type: ignore[arg-type]
        for i in range(0, ROWS, 2):
            copy.write_row((_index(i), 1, "x", "x", "13701000000", "x", "37", AT))


@pytest.mark.parametrize("keys", [1, 2])
def test_c2_c3_login_candidates_are_looked_up_by_index(conninfo: str, keys: int) -> None:
    indexes = [_index(7), _index(ROWS + 1)][:keys]
    named = {f"document_index_{n}": index for n, index in enumerate(indexes)}
    query = storage.login_candidates_query(list(named))
    compiled = query.compile(dialect=postgresql_psycopg.dialect())
    sql = str(compiled)
    values = dict(
        compiled.construct_params(named | {"username_key": "u8", "phone_index": _phone_index(9)})
    )
    with psycopg.connect(conninfo, autocommit=True) as connection:
        found = plans(connection, sql, values)
        rows = connection.execute(sql, values).fetchall()  # type: ignore[arg-type]
    # The document, the username and the phone each name one person (C2, C3).
    assert {row[0] for row in rows} == {"p7", "p8", "p9"}
    for kind, plan in found.items():
        scanned = scanned_tables(plan)
        assert not scanned, f"login candidates ({keys} keys, {kind} plan) scan {scanned}:\n{plan}"
