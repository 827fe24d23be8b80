"""Binding's relations (F1, F2, F3) on PostgreSQL through PgBouncer in transaction mode,
as binding runs behind PgBouncer 1.18 (no prepared statements, the statement timeout set
by the pooler): enterprises registered, people applying, added, confirming and checking
access all at once, over four server connections."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from etax.binding.v1 import binding_pb2 as pb
from etax.common.v1.types_pb2 import Role

from etax_platform.settings import PlatformSettings
from services.binding.settings import BindingSettings
from tests.binding.support import Binding, Person
from tests.harness.numbers import uscc
from tests.harness.servers import PgBouncer, PostgresServer

ENTERPRISES = 8
OFFICERS = 4


@pytest.fixture
def settings(
    postgres: PostgresServer, pgbouncer_server: PgBouncer, tmp_path: Path
) -> Iterator[BindingSettings]:
    """Replaces the package's settings fixture: binding's database through PgBouncer."""
    name = postgres.create_database()
    yield BindingSettings(
        port=0,
        database_url=pgbouncer_server.url(name),
        db_prepared_statements=False,
        db_statement_timeout_ms=0,
        platform=PlatformSettings(data_dir=tmp_path / "data"),
    )
    with postgres.admin() as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_f1_concurrent_relations_through_pgbouncer(binding: Binding) -> None:
    def enterprise(n: int) -> tuple[str, Person, list[Person]]:
        lr, fo = binding.person(f"法人{n}"), binding.person(f"财务{n}")
        code = uscc(500 + n)
        binding.bound_enterprise(code, lr, fo)  # A2, F2
        officers = [binding.person(f"办税员{n}-{k}") for k in range(OFFICERS)]
        for k, officer in enumerate(officers):
            if k % 2:  # F1(a): applies, the financial officer confirms
                applied = binding.apply(code, officer)
                binding.confirm(applied.relation_id, fo)
            else:  # F1(b): added by the legal representative, confirms themself
                binding.tax_officer(code, lr, officer)
            assert binding.check_enterprise(officer, code).enterprise_code == code  # F3
        return code, lr, officers

    with ThreadPoolExecutor(ENTERPRISES) as pool:
        results = list(pool.map(enterprise, range(ENTERPRISES)))
    for code, lr, officers in results:
        active = binding.enterprise_relations(code, lr, pb.RELATION_STATE_ACTIVE)
        tax_officers = [r for r in active if r.role == Role.ROLE_TAX_OFFICER]
        assert len(tax_officers) == OFFICERS
        for officer in officers:
            assert [i.enterprise_code for i in binding.identities(officer)] == [code]
