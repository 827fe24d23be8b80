"""The delivery log (G1) on PostgreSQL through PgBouncer in transaction mode, as sms runs
behind PgBouncer 1.18 (no prepared statements, the statement timeout set by the pooler):
concurrent sends, each writing its row at once, over four server connections."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from etax.common.v1 import types_pb2
from etax.sms.v1 import sms_pb2
from sqlalchemy import select

from etax_platform.db import Database
from etax_platform.errors import from_rpc_error
from services.sms.models import deliveries
from tests.harness.servers import PgBouncer, PostgresServer
from tests.sms.conftest import SmsClient

# The log is about the database: one store kind is enough.
pytestmark = pytest.mark.parametrize("kv_store", ["memory"], indirect=True)

PHONES = [f"1365000{n:04d}" for n in range(40)]


@pytest.fixture
def database_name(postgres: PostgresServer) -> Iterator[str]:
    name = postgres.create_database()
    yield name
    with postgres.admin() as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_g1_concurrent_sends_log_every_delivery_through_pgbouncer(
    start_sms: object, pgbouncer_server: PgBouncer, postgres: PostgresServer, database_name: str
) -> None:
    sms: SmsClient = start_sms(  # type: ignore[operator]
        database_url=pgbouncer_server.url(database_name),
        db_prepared_statements=False,
        db_statement_timeout_ms=0,
        delivery_log_batch_seconds=0,  # each send writes its own row, concurrently
    )

    def send(phone: str) -> str:
        request = sms_pb2.SendCodeRequest(
            phone=phone, purpose=types_pb2.VERIFICATION_PURPOSE_REGISTRATION
        )
        try:
            sms.public.SendCode(request, timeout=20)
        except grpc.RpcError as error:
            domain_error = from_rpc_error(error)
            return domain_error.reason.value if domain_error else error.code().name
        return "OK"

    # Six sends to each phone: five are sent and logged, the sixth is refused (E2).
    with ThreadPoolExecutor(16) as pool:
        outcomes = Counter(pool.map(send, PHONES * 6))
    assert outcomes == Counter({"OK": 5 * len(PHONES), "SMS_RATE_LIMITED": len(PHONES)})
    direct = Database(postgres.url(database_name))
    try:
        with direct.reading() as session:
            rows = session.execute(select(deliveries)).all()
    finally:
        direct.dispose()
    assert Counter(r.outcome for r in rows) == Counter({"sent": 5 * len(PHONES)})
    assert Counter(r.masked_recipient for r in rows) == Counter(
        {f"136****{phone[-4:]}": 5 for phone in PHONES}
    )
