"""What the fuzzer aims at, read from the generated descriptors and nothing else.

Every method of every service in an `etax.*` package (public and Internal*), and every
JSON route its `google.api.http` option declares (additional bindings included). A method
or route added later is fuzzed without a change here.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import cache

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, MethodDescriptor

from etax_platform.settings import REPO_ROOT

DESCRIPTOR_SET = REPO_ROOT / "gen" / "etax_descriptor.pb"
_PATH_FIELD = re.compile(r"\{([\w.]+)(?:=[^}]*)?\}")


@dataclass(frozen=True)
class Rpc:
    service: str  # etax.auth.v1.AuthService
    name: str  # StartLogin
    input: Descriptor
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def cluster(self) -> str:
        """The service process that serves it: etax.auth.v1.InternalAuthService -> auth."""
        return self.service.split(".")[1]

    @property
    def routes(self) -> tuple[Route, ...]:
        return _routes_of(self)

    def __str__(self) -> str:
        return f"{self.service}/{self.name}"


@dataclass(frozen=True)
class Route:
    """One JSON binding of an RPC: verb, path template, which fields the body carries."""

    rpc: Rpc
    verb: str  # GET, POST, ...
    template: str  # /v1/face/tickets/{ticket_id}
    body: str  # "*", "" or a field name

    @property
    def path_fields(self) -> list[str]:
        return _PATH_FIELD.findall(self.template)

    def fill(self, values: dict[str, str]) -> str:
        """The template with each {field} replaced by an already percent-encoded value."""
        return _PATH_FIELD.sub(lambda match: values[match[1]], self.template)

    def __str__(self) -> str:
        return f"{self.verb} {self.template}"


def _bindings(rule: http_pb2.HttpRule) -> list[http_pb2.HttpRule]:
    return [rule, *(b for extra in rule.additional_bindings for b in _bindings(extra))]


@cache
def _routes_of(rpc: Rpc) -> tuple[Route, ...]:
    method = _method(rpc.service, rpc.name)
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return ()
    routes = []
    for rule in _bindings(options.Extensions[annotations_pb2.http]):
        pattern = rule.WhichOneof("pattern")
        if pattern is None:
            continue
        if pattern == "custom":
            verb, template = rule.custom.kind, rule.custom.path
        else:
            verb, template = pattern.upper(), getattr(rule, pattern)
        routes.append(Route(rpc, verb, template, rule.body))
    return tuple(routes)


def _method(service: str, name: str) -> MethodDescriptor:
    found: MethodDescriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    return found


@cache
def rpcs() -> tuple[Rpc, ...]:
    """Every etax RPC, in descriptor order (services of `make protos`' descriptor set)."""
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(DESCRIPTOR_SET.read_bytes())
    found: list[Rpc] = []
    for file in files.file:
        if not file.package.startswith("etax."):
            continue
        # Importing the generated module puts its messages (with options) in the pool.
        importlib.import_module(file.name.removesuffix(".proto").replace("/", ".") + "_pb2")
        for service in file.service:
            full = f"{file.package}.{service.name}"
            for method in service.method:
                descriptor = _method(full, method.name)
                found.append(Rpc(full, method.name, descriptor.input_type, method.server_streaming))
    return tuple(found)


def routes() -> tuple[Route, ...]:
    return tuple(route for rpc in rpcs() for route in rpc.routes)


def services_of(cluster: str) -> tuple[str, ...]:
    """The service names one process registers (and reports health for)."""
    return tuple(sorted({rpc.service for rpc in rpcs() if rpc.cluster == cluster}))
