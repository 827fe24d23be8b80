"""Auth (and the binding it calls) on PostgreSQL through PgBouncer in transaction mode,
as a service runs behind PgBouncer 1.18: no prepared statements, the statement timeout
set by the pooler. Concurrent registrations, logins and refreshes share a few server
connections (four per database) and every one comes out right."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from etax.auth.v1 import auth_pb2

from tests.auth.conftest import failure_of
from tests.auth.platform import Person, Platform, bearer

pytestmark = pytest.mark.parametrize("backend", ["pgbouncer+redis"], indirect=True)

CALLERS = 8


def _refresh(platform: Platform, token: str) -> auth_pb2.Session:
    return platform.auth.RefreshSession(
        auth_pb2.RefreshSessionRequest(refresh_token=token), timeout=20
    ).session


def test_concurrent_registrations_logins_and_refreshes_through_pgbouncer(
    platform: Platform,
) -> None:
    def story(_: int) -> tuple[Person, auth_pb2.Session, list[str]]:
        person = platform.person()
        used: list[str] = []
        session = platform.login(person)
        for _round in range(2):
            for _refreshes in range(6):  # psycopg would prepare these after five runs
                refreshed = _refresh(platform, session.refresh_token)
                assert refreshed.session_id == session.session_id
                used.append(session.refresh_token)
                session = refreshed
            profile = platform.server.account.GetProfile(
                auth_pb2.GetProfileRequest(), metadata=bearer(session), timeout=20
            ).profile
            assert profile.person_id == person.person_id
            if _round == 0:
                session = platform.login(person)  # a second session of the same person
        return person, session, used

    with ThreadPoolExecutor(CALLERS) as pool:
        results = list(pool.map(story, range(CALLERS)))
    assert len({person.person_id for person, _, _ in results}) == CALLERS
    _, session, used = results[0]
    # Rotation held: the newest token works once, a used one ends the session (theft).
    assert _refresh(platform, session.refresh_token).session_id == session.session_id
    assert failure_of(_refresh, platform, used[-1]).reason == "UNAUTHENTICATED"
