"""A trivial echo server of either server type, for measuring ceilings.

python -m bench.echo_server sync|aio|platform|platform-redis|platform-postgres|platform-grpc PORT
  sync      grpc.server with a thread pool, nothing else
  aio       grpc.aio with the default event loop
  platform  etax_platform.server.GrpcHost (interceptor, health, reflection) echoing

The fair ceilings of an RPC that must reach a store or another service: the platform echo
plus exactly one such call, through the clients the services use.
  platform-redis     + one script on ETAX_BENCH_REDIS_URL (RedisStore.run, one HGET)
  platform-postgres  + one prepared statement on ETAX_BENCH_DATABASE_URL (Database.run,
                       a primary-key SELECT)
  platform-grpc      + one unary call to ETAX_BENCH_DOWNSTREAM (clients.Dependency, as auth calls
                       sms, face and binding)
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

import etax_platform  # noqa: F401 - generated code on sys.path
from etax_platform import clients
from etax_platform.db import Database, Statement
from etax_platform.kv import RedisStore, Script
from etax_platform.server import GrpcHost, Registration

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Echo"


def _handler(behaviour: object) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(behaviour)}
    )


def serve_sync(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((_handler(lambda request, _context: request),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def _serve_aio(port: int) -> None:
    async def echo(request: bytes, _context: object) -> bytes:
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handler(echo),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_platform(port: int, before_answer: Callable[[], Any] | None = None) -> None:
    def echo(request: bytes, _context: object) -> bytes:
        if before_answer is not None:
            before_answer()
        return request

    registration = Registration(
        SERVICE, lambda server: server.add_generic_rpc_handlers((_handler(echo),))
    )
    GrpcHost([registration], port=port).serve_until_signalled()


_ONE_HGET = Script(
    "bench-one-hget",
    "return redis.call('HGET', KEYS[1], 'v')",
    lambda records, keys, _args: records.hget(keys[0], "v"),
)
# A primary-key lookup of a table every production database has (binding's).
_ONE_SELECT = Statement(
    postgresql="SELECT document_index FROM person_documents WHERE person_id = %(person_id)s"
)


def one_store_call(kind: str) -> Callable[[], Any]:
    """The one call a fair ceiling makes per echo."""
    if kind == "platform-redis":
        store = RedisStore(os.environ["ETAX_BENCH_REDIS_URL"], prefix="bench:")
        return lambda: store.run(_ONE_HGET, ["bench:echo"], [])
    if kind == "platform-postgres":
        database = Database(os.environ["ETAX_BENCH_DATABASE_URL"])
        return lambda: database.run(_ONE_SELECT, {"person_id": "bench"})
    channel = clients.open_channel(os.environ["ETAX_BENCH_DOWNSTREAM"])
    downstream = channel.unary_unary(METHOD)
    echo = clients.Dependency("echo", channel, timeout=5)
    return lambda: echo.call(downstream, b"\n\x04echo")


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "sync":
        serve_sync(port)
    elif kind == "aio":
        asyncio.run(_serve_aio(port))
    elif kind == "platform":
        serve_platform(port)
    else:
        serve_platform(port, one_store_call(kind))


if __name__ == "__main__":
    main()
