"""A statement's PostgreSQL plans, for tests that hold hot statements to index lookups.

Both plans count: the one PostgreSQL makes for given values, and the generic one, made for
any values, that a prepared statement may switch to after its fifth run (`Database.run`
prepares every hot statement, and psycopg prepares any query run five times)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import psycopg

from etax_platform.db import _Prepared
from tests.harness.servers import PostgresServer


def analysed_database(
    postgres: PostgresServer,
    migrations: Path,
    fill: Callable[[psycopg.Connection[object]], None],
) -> str:
    """A new database at a service's newest migration, filled and analysed (so plans see
    its real sizes); its libpq conninfo."""
    url = postgres.url(postgres.migrated_database(migrations))
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True) as connection:
        fill(connection)
        connection.execute("ANALYZE")
    return plain


def plans(
    connection: psycopg.Connection[object], sql: str, values: Mapping[str, object]
) -> dict[str, str]:
    """The custom and the generic plan of `sql` (psycopg's `%(name)s` placeholders)."""
    custom = connection.execute(f"EXPLAIN {sql}", values)  # type: ignore[arg-type]
    prepared = _Prepared.of(sql, {})
    connection.execute("SET plan_cache_mode = force_generic_plan")
    connection.execute(f"PREPARE generic AS {prepared.text.decode()}")  # type: ignore[arg-type]
    try:
        nulls = ", ".join("NULL" for _ in prepared.names)
        generic = connection.execute(f"EXPLAIN EXECUTE generic({nulls})")  # type: ignore[arg-type]
        return {
            "custom": "\n".join(str(row[0]) for row in custom),
            "generic": "\n".join(str(row[0]) for row in generic),
        }
    finally:
        connection.execute("DEALLOCATE generic")
        connection.execute("RESET plan_cache_mode")


def scanned_tables(plan: str) -> list[str]:
    """Tables the plan reads whole."""
    return re.findall(r"Seq Scan on (\w+)", plan)
