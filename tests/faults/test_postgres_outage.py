"""Nothing written off the request path is lost while PostgreSQL is away (issue 11): a
light load through real sms and auth servers (5 requests a second each, for about 10 s)
runs while PostgreSQL is stopped for 4 s and started again on the same data directory and
port. Every SMS delivery record and every audit event is then in its table exactly once,
in the order of the requests, and the local journal that held them carried no plain phone
or document number."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.sms.v1 import sms_pb2, sms_pb2_grpc
from sqlalchemy import func, select

from etax_platform.db import Database
from etax_platform.kv import MemoryStore
from etax_platform.pii import mask_phone
from etax_platform.server import GrpcHost
from etax_platform.settings import PlatformSettings
from services.auth.app import build as build_auth
from services.auth.models import audit_events
from services.sms.app import build as build_sms
from services.sms.models import deliveries
from services.sms.settings import SmsSettings
from tests.auth.conftest import auth_settings
from tests.harness.numbers import resident_id
from tests.harness.servers import PostgresServer, postgres_server

pytestmark = pytest.mark.slow

RATE = 5  # requests a second, to each service
LOAD_SECONDS = 10.0
DOWN_AT, UP_AT = 3.0, 7.0
REGISTRATION = 1  # VERIFICATION_PURPOSE_REGISTRATION


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own: it is stopped and started."""
    with postgres_server() as server:
        yield server


def _phone(n: int) -> str:
    return f"1390000{n:04d}"


def _journal_text(*directories: Path) -> str:
    return "".join(
        path.read_text(errors="replace") for d in directories for path in d.glob("*.jsonl")
    )


def test_no_delivery_record_or_audit_event_is_lost_while_postgresql_is_away(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    sms_url = own_postgres.url(own_postgres.create_database())
    auth_url = own_postgres.url(own_postgres.create_database())
    hosts: list[GrpcHost] = []
    channels: list[grpc.Channel] = []
    sms_host = build_sms(
        SmsSettings(
            port=0,
            outbox_enabled=True,
            throttle_limit=100_000,  # E2 is not under test here
            database_url=sms_url,
            platform=PlatformSettings(data_dir=tmp_path / "sms"),
        ),
        store=MemoryStore(),
    ).start()
    hosts.append(sms_host)
    channels.append(grpc.insecure_channel(sms_host.address))
    auth_host = build_auth(
        auth_settings(tmp_path / "auth", auth_url),
        store=MemoryStore(),
        sms_channel=channels[0],
    ).start()
    hosts.append(auth_host)
    channels.append(grpc.insecure_channel(auth_host.address))
    sms = sms_pb2_grpc.SmsServiceStub(channels[0])
    auth = auth_pb2_grpc.AuthServiceStub(channels[1])
    journals = (tmp_path / "sms" / "journal", tmp_path / "auth" / "journal")

    broken: list[BaseException] = []

    def outage() -> None:
        try:
            time.sleep(DOWN_AT)
            own_postgres.stop()
            time.sleep(UP_AT - DOWN_AT)
            own_postgres.start()
        except BaseException as error:  # reported by the test, not lost in the thread
            broken.append(error)

    faults = threading.Thread(target=outage)
    answers: list[grpc.StatusCode] = []
    most_journaled = 0
    documents: list[str] = []
    try:
        started = time.monotonic()
        faults.start()
        n = 0
        while time.monotonic() - started < LOAD_SECONDS:
            tag = (("x-request-id", f"fault-{n:04d}"),)
            sms.SendCode(
                sms_pb2.SendCodeRequest(phone=_phone(n), purpose=REGISTRATION),  # type: ignore[arg-type]
                metadata=tag,
                timeout=10,
            )
            documents.append(resident_id(n % 1000, birth="19800101"))
            # Not registered: refused while the database is there, an error while it is
            # away; one audit event either way.
            with pytest.raises(grpc.RpcError) as failed:
                auth.StartLogin(
                    auth_pb2.StartLoginRequest(
                        entry=1, account=documents[-1], password="Passw0rd.1", province="37"
                    ),
                    metadata=tag,
                    timeout=10,
                )
            answers.append(failed.value.code())
            held = _journal_text(*journals)
            most_journaled = max(most_journaled, held.count("\n"))
            assert _phone(n) not in held and documents[-1] not in held
            n += 1
            time.sleep(max(0.0, started + n / RATE - time.monotonic()))
        faults.join()
        if broken:
            raise broken[0]
        # The outage was real and the journal carried it.
        assert grpc.StatusCode.UNAVAILABLE in answers and grpc.StatusCode.NOT_FOUND in answers
        assert most_journaled >= 2 * RATE

        sms_db, auth_db = Database(sms_url), Database(auth_url)
        try:
            deadline = time.monotonic() + 20
            tagged = audit_events.c.request_id.like("fault-%")
            while time.monotonic() < deadline:
                with sms_db.reading() as c:
                    sent = c.scalar(select(func.count()).select_from(deliveries))
                with auth_db.reading() as c:
                    audited = c.scalar(select(func.count()).where(tagged))
                if (sent, audited) == (n, n):
                    break
                time.sleep(0.1)
            for host in hosts:  # their writers write what is left and close their journals
                host.stop(grace=0)
            hosts.clear()
            with sms_db.reading() as c:
                records = c.execute(
                    select(deliveries.c.masked_recipient, deliveries.c.delivery_id).order_by(
                        deliveries.c.id
                    )
                ).all()
            with auth_db.reading() as c:
                events = c.execute(
                    select(audit_events.c.request_id, audit_events.c.outcome)
                    .where(tagged)
                    .order_by(audit_events.c.id)
                ).all()
        finally:
            sms_db.dispose()
            auth_db.dispose()
    finally:
        if faults.is_alive():
            faults.join()
        for channel in channels:
            channel.close()
        for host in hosts:
            host.stop(grace=0)

    assert [r.masked_recipient for r in records] == [mask_phone(_phone(i)) for i in range(n)]
    assert len({r.delivery_id for r in records}) == n
    assert [e.request_id for e in events] == [f"fault-{i:04d}" for i in range(n)]
    assert {e.outcome for e in events} == {"refused", "error"}
    assert _journal_text(*journals) == ""  # replayed and cut back: nothing waits
