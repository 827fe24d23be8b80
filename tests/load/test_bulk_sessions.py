"""bench/bulk.py's sessions for existing persons (the bench's RefreshSession tokens): the
rows it writes into auth's PostgreSQL are sessions auth itself accepts, once each (A3)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import jwt
import pytest
from etax.auth.v1 import auth_pb2, auth_pb2_grpc

from bench import bulk
from bench.dataset import Channels, import_persons
from bench.platform import Platform, running_platform

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(tmp_path_factory.mktemp("platform"), "production") as running:
        yield running


def test_bulk_refresh_tokens_refresh_once_each_for_their_person(platform: Platform) -> None:
    channels = Channels.direct(platform.address)
    try:
        persons = import_persons(channels, 2)
    finally:
        channels.close()
    auth = bulk.Databases.of(platform.env).auth
    tokens = bulk.open_sessions(auth, [p.person_id for p in persons], 3)
    assert len(set(tokens)) == 3
    with grpc.insecure_channel(platform.address("auth")) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        for n, token in enumerate(tokens):
            request = auth_pb2.RefreshSessionRequest(refresh_token=token)
            session = stub.RefreshSession(request, timeout=10).session
            assert session.refresh_token not in (token, "")
            claims = jwt.decode(session.access_token, options={"verify_signature": False})
            assert claims["sub"] == persons[n % 2].person_id  # round the persons
            with pytest.raises(grpc.RpcError) as again:  # single use
                stub.RefreshSession(request, timeout=10)
            assert again.value.code() == grpc.StatusCode.UNAUTHENTICATED
