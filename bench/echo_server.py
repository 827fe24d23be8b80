"""A trivial echo server of either server type, for measuring ceilings.

python -m bench.echo_server sync|aio|platform PORT
  sync      grpc.server with a thread pool, nothing else
  aio       grpc.aio with the default event loop
  platform  etax_platform.server.GrpcHost (interceptor, health, reflection) echoing
"""

from __future__ import annotations

import asyncio
import sys
from concurrent import futures

import grpc

import etax_platform  # noqa: F401 - generated code on sys.path
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


def serve_platform(port: int) -> None:
    registration = Registration(
        SERVICE,
        lambda server: server.add_generic_rpc_handlers(
            (_handler(lambda request, _context: request),)
        ),
    )
    GrpcHost([registration], port=port).serve_until_signalled()


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "sync":
        serve_sync(port)
    elif kind == "aio":
        asyncio.run(_serve_aio(port))
    else:
        serve_platform(port)


if __name__ == "__main__":
    main()
