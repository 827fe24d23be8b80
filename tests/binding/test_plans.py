"""The access statements' plans on PostgreSQL: index lookups only, whatever the number of
enterprises, projects and persons (issue 14's size target). A scan of a whole table would
make ListMyIdentities and CheckAccess (D5, F1, F4) slower with every person registered:
an OR of two IN subqueries over projects once did, found by `make bench-size` at 1M
persons (24 CheckAccess/s). Both plans count: the one made for given values, and the
generic one a prepared statement may switch to (an array parameter's scanned projects).
Plans, not timings, so the test holds on a busy machine."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.dialects import postgresql

from etax_platform.db import ListStatement
from services.binding import storage
from services.binding.app import MIGRATIONS
from services.binding.domain import ACTIVE, Origin
from tests.harness.plans import analysed_database, plans, scanned_tables
from tests.harness.servers import PostgresServer

ROWS = 3000
NOW_MS = 1_800_000_000_000
ORIGIN = Origin.REGISTRATION.value


def _index(i: int) -> str:
    return f"{i:064x}"


def _code(i: int) -> str:
    return f"91370100MA{i:08d}"


@pytest.fixture(scope="module")
def conninfo(postgres: PostgresServer) -> str:
    return analysed_database(postgres, MIGRATIONS, _fill)


def _copy(connection: psycopg.Connection[object], table: str, columns: str, rows: object) -> None:
    with connection.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:  # type: ignore[arg-type]
        for row in rows:  # type: ignore[attr-defined]
            copy.write_row(row)


def _fill(connection: psycopg.Connection[object]) -> None:
    """Per i: an enterprise, a person's active relation to it, a project of it naming the
    person, an agency with the person as agent and an agreement for that enterprise."""
    n = range(ROWS)
    _copy(
        connection,
        "enterprises",
        "code, name, tax_authority_code, tax_authority_name, province, created_at, updated_at",
        ((_code(i), f"企业{i}", "13701000000", "国家税务总局济南市税务局", "37", 0, 0) for i in n),
    )
    _copy(
        connection,
        "relations",
        "relation_id, enterprise_code, role, state, origin, document_index, index_key_id, "
        "document_type, document_number_encrypted, person_name_encrypted, created_at, "
        "updated_at",
        ((f"r{i}", _code(i), 1, int(ACTIVE), ORIGIN, _index(i), "k", 1, "x", "x", 0, 0) for i in n),
    )
    _copy(
        connection,
        "projects",
        "project_number, enterprise_code, subject_type, tax_authority_code, "
        "tax_authority_name, province, created_at, updated_at",
        ((f"P{i}", _code(i), 1, "11101000000", "国家税务总局北京市税务局", "11", 0, 0) for i in n),
    )
    _copy(
        connection,
        "project_people",
        "project_number, role, document_index, index_key_id",
        ((f"P{i}", 1, _index(i), "k") for i in n),
    )
    _copy(
        connection,
        "agencies",
        "agency_code, name, created_at, updated_at",
        ((f"A{i}", f"代理{i}", 0, 0) for i in n),
    )
    _copy(
        connection,
        "agency_agents",
        "agency_code, document_index, index_key_id",
        ((f"A{i}", _index(i), "k") for i in n),
    )
    _copy(
        connection,
        "agreements",
        "agreement_id, agency_code, client_code, valid_from, valid_until, created_at, updated_at",
        ((f"g{i}", f"A{i}", _code(i), 0, NOW_MS * 2, 0, 0) for i in n),
    )
    _copy(
        connection,
        "agreement_agents",
        "agreement_id, document_index, index_key_id",
        ((f"g{i}", _index(i), "k") for i in n),
    )


STATEMENTS: dict[str, tuple[ListStatement, dict[str, object]]] = {
    "identities": (storage._IDENTITIES[False], {"province": ""}),
    "identities in a province": (storage._IDENTITIES[True], {"province": "11"}),
    "subject access": (storage._SUBJECT_ACCESS[False], {"province": ""}),
    "subject access in a province": (storage._SUBJECT_ACCESS[True], {"province": "11"}),
    "agent access": (storage._AGENT_ACCESS, {"agency_code": "A7"}),
    "enterprise access": (storage._ENTERPRISE_ACCESS, {"code": _code(7)}),
}
# A person with one index, and one with two during a key rotation (the second matches
# nothing here; the statement must still find the first's rows).
SHAPES = {"one index": [_index(7)], "two indexes": [_index(7), _index(ROWS + 1)]}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", list(STATEMENTS))
def test_d5_f1_f4_access_statements_look_rows_up_by_index(
    conninfo: str, name: str, shape: str
) -> None:
    person_statement, params = STATEMENTS[name]
    statement, bound = person_statement.bound(SHAPES[shape], {**params, "now_ms": NOW_MS})
    prepared = statement.for_psycopg(postgresql.dialect())
    sql = prepared.sql
    values = {**prepared.fixed, **bound}
    with psycopg.connect(conninfo, autocommit=True) as connection:
        found = plans(connection, sql, values)
        rows = connection.execute(sql, values).fetchall()  # type: ignore[arg-type]
    assert rows, "the person has access of this kind"
    for kind, plan in found.items():
        scanned = scanned_tables(plan)
        assert not scanned, f"{name} ({shape}, {kind} plan) scans {scanned}:\n{plan}"
