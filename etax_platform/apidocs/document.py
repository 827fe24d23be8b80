"""The OpenAPI 2.0 document of the public JSON API, from the protos.

Why protoc-gen-openapiv2 (grpc-gateway, OpenAPI 2.0): it is the maintained generator for
`google.api.http`, and it describes what Envoy's transcoder does with those rules (path
parameters left out of a `body: "*"` schema, query parameters for GET, custom verbs), with
options matching the gateway's print options: proto field names and enum names. Its
OpenAPI 3.1 sibling (protoc-gen-openapiv3) is alpha and can only use JSON (camelCase)
names, which the gateway does not send. OpenAPI 2.0 has no `oneOf` and no bearer scheme;
`finish` says those in words (and in `x-etax-*` extensions).

What the generator cannot know, `finish` adds from the contract and the platform:
access and flood guard per operation (`etax.common.v1.policy`; only public RPCs stay),
the one error schema and the HTTP status of every reason (`etax_platform.errors`, the
transcoder's mapping below, the gateway's own replies), streaming, title and description.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from etax_platform.apidocs import DOCUMENT_NAME, PAGE_NAME, page
from etax_platform.errors import ERROR_DOMAIN, LOCALE, MEANINGS, Reason
from etax_platform.gateway.replies import gateway_statuses
from etax_platform.policy import Access, FloodGuard, RpcPolicy, contract_policies
from etax_platform.settings import REPO_ROOT

PROTOS = REPO_ROOT / "protos"
GEN_DIR = REPO_ROOT / "gen" / "openapi"
# `make protos` installs it (Makefile, OPENAPIV2_VERSION).
PLUGIN = Path(
    os.environ.get(
        "ETAX_PROTOC_GEN_OPENAPIV2", str(REPO_ROOT / "build" / "bin" / "protoc-gen-openapiv2")
    )
)
PLUGIN_OPTIONS = (
    "allow_merge=true",
    "merge_file_name=etax",
    # The transcoder's print options: preserve_proto_field_names, enums as names.
    "json_names_for_fields=false",
    "enums_as_ints=false",
    "openapi_naming_strategy=simple",
    "preserve_rpc_order=true",
    # The platform's Status schema replaces the generator's rpcStatus.
    "disable_default_errors=true",
    "ignore_go_package_option=true",
)

Code = grpc.StatusCode
# The HTTP status Envoy's JSON transcoder (convert_grpc_status) answers for a gRPC code;
# tests/gateway/test_openapi.py checks every code a reason maps to against Envoy 1.40.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.OUT_OF_RANGE: 400,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.ABORTED: 409,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INTERNAL: 500,
    Code.DATA_LOSS: 500,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
}

# Each error status a client must handle: its name in `responses` and what to do.
_ERROR_RESPONSES: dict[int, tuple[str, str]] = {
    400: (
        "BadRequest",
        "Bad input, a failed attempt or a state that does not allow it. Show the message; "
        "a wrong password or code (CREDENTIALS_INVALID, CODE_INVALID) is 400, not 401: do "
        "not refresh the session for it. metadata.field names a bad field.",
    ),
    401: (
        "Unauthenticated",
        "The request's own access token is missing, invalid, expired or revoked (for "
        "RefreshSession and Logout: the refresh token). Refresh the session once, "
        "otherwise log in again.",
    ),
    403: (
        "PermissionDenied",
        "Not allowed for this person or session. Show the message; AUTH_METHOD_LOCKED "
        "carries metadata.unlock_at (forgot password or a face check unlock it earlier).",
    ),
    404: (
        "NotFound",
        "Not registered, not found, or no such route. Show the message "
        "(USER_NOT_REGISTERED: offer registration; PHONE_NOT_FOUND: log in by document "
        "number).",
    ),
    409: (
        "Conflict",
        "Already exists (ALREADY_REGISTERED: log in instead; USERNAME_TAKEN: choose another).",
    ),
    413: ("PayloadTooLarge", "The JSON request body is over the gateway's limit (4 MiB)."),
    429: (
        "TooManyRequests",
        "Throttled: by the service (SMS_RATE_LIMITED, E2) or by the gateway's flood guard "
        "(TOO_MANY_REQUESTS). Wait as RetryInfo.retry_delay says, then try again.",
    ),
    500: (
        "InternalError",
        "A fault of the platform; the body says nothing more (no ErrorInfo). Try again "
        "later and report the x-request-id.",
    ),
    503: (
        "Unavailable",
        "A service or provider is busy or down; nothing was done. Try again later "
        "(after RetryInfo.retry_delay when given).",
    ),
    504: ("GatewayTimeout", "No answer within the gateway's route timeout. Try again later."),
}

_ACCESS_TEXT = {
    Access.ANONYMOUS: "Access: anonymous (no session needed). 无需登录。",
    Access.SESSION: "Access: a session (Authorization: Bearer <access_token>). 需要登录。",
    Access.TRUSTED_APP_SESSION: (
        "Access: a session of the tax APP or of a trusted APP (the personal income tax APP), "
        "Authorization: Bearer <access_token>. 需要 APP 登录。"
    ),
}
_FLOOD_GUARD_TEXT = {
    FloodGuard.LOGIN: (
        "Flood guard: login (per client address and per x-etax-app-id); over it: HTTP 429 "
        "TOO_MANY_REQUESTS."
    ),
    FloodGuard.CODE: (
        "Flood guard: code sending (per client address and per x-etax-app-id); over it: "
        "HTTP 429 TOO_MANY_REQUESTS."
    ),
}

_DESCRIPTION = """\
电子税务局 新版登录 身份平台的公共 JSON 接口，由网关（Envoy）从 gRPC 转码提供。
The public JSON API of the e-tax bureau's identity platform, transcoded from gRPC by the
gateway; the same operations are served as gRPC and gRPC-Web (`x-etax-rpc` names the
method). Flows step by step: docs/api.md in the repository.

- **Fields**: proto field names (snake_case; camelCase is accepted on input); enums by
  name (any case accepted on input); Timestamps as RFC 3339 strings in UTC; Durations as
  `"300s"`; bytes as base64; 64-bit integers as strings. Every scalar field of an answer is
  present, zero values included. Unknown query parameters are ignored.
- **Sessions**: operations with the `bearer` security need
  `Authorization: Bearer <session.access_token>` (a short-lived Ed25519 JWT). Refresh it
  with the single-use refresh token (`POST /v1/auth/sessions:refresh`).
- **Province** (省份): the gateway tells the services which province's bureau it is; a
  `province` request field may stay empty, and naming another province is refused.
- **Errors** (错误): every error body is a `Status` (google.rpc.Status) with an ErrorInfo
  (domain `etax`, a stable `reason` to branch on) and a LocalizedMessage (zh-CN text to
  show), and a RetryInfo when throttled. The `responses` section lists every reason per
  HTTP status, with what a client does.
- **Flood guards** (`x-etax-flood-guard`): per client address, and per APP for requests
  naming one in `x-etax-app-id`.
- **Request ids**: every answer carries `x-request-id`; send your own to trace a call.
"""


@dataclass(frozen=True)
class HttpRoute:
    """One `google.api.http` binding of an RPC."""

    policy: RpcPolicy
    verb: str  # post
    path: str  # /v1/auth/logins/{challenge_id}:sendCode
    body: str

    @property
    def operation_id(self) -> str:
        return _operation_id(self.policy)


def _simple(service: str) -> str:
    """etax.auth.v1.AuthService -> AuthService."""
    return service.rsplit(".", 1)[1]


def _operation_id(policy: RpcPolicy) -> str:
    """protoc-gen-openapiv2's: AuthService_SendLoginCode."""
    return f"{_simple(policy.service)}_{policy.method}"


def _bindings(options: descriptor_pb2.MethodOptions) -> Iterator[tuple[str, str, str]]:
    if not options.HasExtension(annotations_pb2.http):
        return
    rule = options.Extensions[annotations_pb2.http]
    for binding in [rule, *rule.additional_bindings]:
        verb = binding.WhichOneof("pattern")
        if verb == "custom":
            yield binding.custom.kind.lower(), binding.custom.path, binding.body
        elif verb is not None:
            yield verb, getattr(binding, verb), binding.body


def http_routes(files: descriptor_pb2.FileDescriptorSet) -> list[HttpRoute]:
    """Every HTTP binding of every etax RPC, public or not, in declaration order."""
    policies = {p.full_name: p for p in contract_policies(files)}
    return [
        HttpRoute(policies[f"{file.package}.{service.name}/{method.name}"], verb, path, body)
        for file in files.file
        if file.package.startswith("etax.")
        for service in file.service
        for method in service.method
        for verb, path, body in _bindings(method.options)
    ]


# --- generating -----------------------------------------------------------------------


def load_descriptor_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(path.read_bytes())
    return files


def generate_raw(plugin: Path, workdir: Path) -> tuple[dict[str, Any], Path]:
    """protoc-gen-openapiv2 over every proto: its document and the descriptor set of the
    same run (so the policies come from the very protos the document does)."""
    if not plugin.is_file():
        raise FileNotFoundError(
            f"{plugin} is missing: `make protos` installs protoc-gen-openapiv2 (go install)"
        )
    site_packages = sysconfig.get_paths()["purelib"]
    descriptor = workdir / "descriptor.pb"
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    subprocess.run(  # noqa: S603 - fixed arguments
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{site_packages}",
            f"--plugin=protoc-gen-openapiv2={plugin}",
            f"--openapiv2_out={workdir}",
            f"--openapiv2_opt={','.join(PLUGIN_OPTIONS)}",
            f"--descriptor_set_out={descriptor}",
            "--include_imports",
            "--include_source_info",
            *files,
        ],
        check=True,
    )
    raw: dict[str, Any] = json.loads((workdir / "etax.swagger.json").read_text(encoding="utf-8"))
    return raw, descriptor


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def generate(plugin: Path = PLUGIN) -> tuple[dict[str, Any], descriptor_pb2.FileDescriptorSet]:
    """The finished document from the protos as they are now, and their descriptor set."""
    with tempfile.TemporaryDirectory() as workdir:
        raw, descriptor = generate_raw(plugin, Path(workdir))
        files = load_descriptor_set(descriptor)
    return finish(raw, files), files


def build(target: Path = GEN_DIR, plugin: Path = PLUGIN) -> Path:
    """Writes <target>/openapi.json and the reference page <target>/api.html."""
    document, _ = generate(plugin)
    target.mkdir(parents=True, exist_ok=True)
    (target / DOCUMENT_NAME).write_text(dumps(document), encoding="utf-8")
    (target / PAGE_NAME).write_text(page.render(document), encoding="utf-8")
    return target / DOCUMENT_NAME


# --- what the generator cannot know -------------------------------------------------------


def finish(raw: dict[str, Any], files: descriptor_pb2.FileDescriptorSet) -> dict[str, Any]:
    """The served document: the generator's, with only public operations, each with its
    policy and the error responses, and the platform's error schema."""
    public = {(r.verb, r.path): r for r in http_routes(files) if r.policy.public}
    paths: dict[str, Any] = {}
    for path, operations in raw.get("paths", {}).items():
        kept = {
            verb: _operation(operation, public[(verb, path)])
            for verb, operation in operations.items()
            if (verb, path) in public
        }
        if kept:
            paths[path] = kept
    used_tags = {tag for ops in paths.values() for op in ops.values() for tag in op["tags"]}
    definitions = dict(raw.get("definitions", {}))
    _note_oneofs(definitions, files, public.values())
    definitions.update(_error_definitions(files))
    document: dict[str, Any] = {
        "swagger": "2.0",
        "info": {
            "title": "电子税务局 新版登录 身份平台 API (e-tax identity platform)",
            "version": "v1",
            "description": _DESCRIPTION,
        },
        # No host, basePath or schemes: the gateway that serves the document.
        "tags": [t for t in raw.get("tags", []) if t["name"] in used_tags],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": {
            "bearer": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": (
                    "`Bearer <session.access_token>` (OpenAPI 2.0 has no bearer scheme: "
                    "the header value is `Bearer `, then the token)."
                ),
            }
        },
        "paths": paths,
        "definitions": {},
        "responses": _error_responses(),
    }
    reachable = _reachable(document, definitions)
    document["definitions"] = {k: v for k, v in sorted(definitions.items()) if k in reachable}
    return document


def _operation(generated: dict[str, Any], route: HttpRoute) -> dict[str, Any]:
    policy = route.policy
    notes = [_ACCESS_TEXT[policy.access]]
    if policy.flood_guard is not FloodGuard.NONE:
        notes.append(_FLOOD_GUARD_TEXT[policy.flood_guard])
    ok = dict(generated["responses"]["200"])
    if policy.server_streaming:
        # The transcoder sends each message as one JSON object per line (no wrapper).
        message = ok["schema"]["properties"]["result"]
        ok = {
            "description": (
                "A stream: newline-delimited JSON, one object per line, until the stream "
                "ends (an error after the first line ends the stream)."
            ),
            "schema": message,
        }
    operation: dict[str, Any] = {}
    for key in ("summary", "description"):
        if key in generated:
            operation[key] = generated[key]
    operation["description"] = "\n\n".join(
        text for text in (generated.get("description", ""), *notes) if text
    )
    operation["operationId"] = generated["operationId"]
    operation["tags"] = generated["tags"]
    operation["security"] = [{"bearer": []}] if policy.needs_session else []
    operation["x-etax-rpc"] = policy.full_name
    operation["x-etax-access"] = policy.access.name
    if policy.flood_guard is not FloodGuard.NONE:
        operation["x-etax-flood-guard"] = policy.flood_guard.name
    if policy.server_streaming:
        operation["x-etax-streaming"] = "newline-delimited JSON"
    if "parameters" in generated:
        operation["parameters"] = generated["parameters"]
    operation["responses"] = {
        "200": ok,
        **{
            str(status): {"$ref": f"#/responses/{_ERROR_RESPONSES[status][0]}"}
            for status in error_statuses()
        },
    }
    return operation


def error_statuses() -> list[int]:
    """Every HTTP status an error of the API comes with, in order."""
    statuses = {HTTP_STATUS[meaning.code] for meaning in MEANINGS.values()}
    statuses |= {status for status, _ in gateway_statuses()}
    statuses.add(HTTP_STATUS[Code.INTERNAL])
    return sorted(statuses)


def reasons_by_status() -> dict[int, list[Reason]]:
    """The reasons each HTTP status can carry: the services' (by their gRPC code) and the
    gateway's own replies."""
    found: dict[int, list[Reason]] = {status: [] for status in error_statuses()}
    for reason, meaning in MEANINGS.items():
        found[HTTP_STATUS[meaning.code]].append(reason)
    for status, reason in gateway_statuses():
        if reason not in found[status]:
            found[status].append(reason)
    return found


def _error_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, reasons in reasons_by_status().items():
        name, action = _ERROR_RESPONSES[status]
        lines = [f"HTTP {status}. {action}"]
        if reasons:
            lines.append("Reasons (ErrorInfo.reason, default zh-CN text):")
            lines += [f"- {r.value}: {MEANINGS[r].text}" for r in reasons]
        responses[name] = {
            "description": "\n".join(lines),
            "schema": {"$ref": "#/definitions/Status"},
            "x-etax-http-status": status,
            "x-etax-reasons": [r.value for r in reasons],
        }
    return responses


def _reason_comments(files: descriptor_pb2.FileDescriptorSet) -> dict[str, str]:
    """ErrorReason value name (without prefix) -> its comment in errors.proto."""
    for file in files.file:
        for index, enum in enumerate(file.enum_type):
            if f"{file.package}.{enum.name}" != "etax.common.v1.ErrorReason":
                continue
            comments: dict[int, str] = {}
            for location in file.source_code_info.location:
                path = list(location.path)
                # 5: FileDescriptorProto.enum_type, 2: EnumDescriptorProto.value
                if len(path) == 4 and path[:3] == [5, index, 2]:
                    comments[path[3]] = " ".join(location.leading_comments.split())
            return {
                value.name.removeprefix("ERROR_REASON_"): comments.get(number, "")
                for number, value in enumerate(enum.value)
            }
    return {}


def _error_definitions(files: descriptor_pb2.FileDescriptorSet) -> dict[str, Any]:
    comments = _reason_comments(files)
    reasons = list(MEANINGS)
    reason_lines = [
        f"- {r.value} (HTTP {HTTP_STATUS[MEANINGS[r].code]}): {comments.get(r.value, '')}"
        for r in reasons
    ]
    detail_types = [
        f"type.googleapis.com/google.rpc.{name}"
        for name in ("ErrorInfo", "LocalizedMessage", "RetryInfo")
    ]
    return {
        "Status": {
            "type": "object",
            "description": (
                "Every error body (google.rpc.Status): the gRPC code, the zh-CN user text "
                "and details: an ErrorInfo (domain etax, the reason), a LocalizedMessage "
                "(zh-CN) and, when throttled, a RetryInfo. An internal error (HTTP 500) "
                "has no details."
            ),
            "required": ["code", "message"],
            "properties": {
                "code": {
                    "type": "integer",
                    "format": "int32",
                    "description": "The gRPC status code (3 INVALID_ARGUMENT, 16 "
                    "UNAUTHENTICATED, ...); the HTTP status follows from it.",
                },
                "message": {"type": "string", "description": "The user text (zh-CN)."},
                "details": {"type": "array", "items": {"$ref": "#/definitions/StatusDetail"}},
            },
        },
        "StatusDetail": {
            "type": "object",
            "description": (
                "One google.protobuf.Any detail, told apart by @type: ErrorInfo (reason, "
                "domain, metadata), LocalizedMessage (locale, message) or RetryInfo "
                "(retry_delay)."
            ),
            "required": ["@type"],
            "properties": {
                "@type": {"type": "string", "enum": detail_types},
                "reason": {"$ref": "#/definitions/ErrorReason"},
                "domain": {"type": "string", "enum": [ERROR_DOMAIN]},
                "metadata": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": (
                        "ErrorInfo: field (the bad request field), remaining_attempts, "
                        "method and unlock_at (lockout, E1), hint (face), "
                        "retry_after_seconds; source=gateway on errors the gateway made. "
                        "Never a personal number."
                    ),
                },
                "locale": {"type": "string", "enum": [LOCALE]},
                "message": {
                    "type": "string",
                    "description": "LocalizedMessage: the text to show the user.",
                },
                "retry_delay": {
                    "type": "string",
                    "description": 'RetryInfo: how long to wait, e.g. "300s".',
                },
            },
        },
        "ErrorReason": {
            "type": "string",
            "enum": [r.value for r in reasons],
            "description": "ErrorInfo.reason: stable, never renamed (etax.common.v1."
            "ErrorReason without its prefix).\n\n" + "\n".join(reason_lines),
        },
    }


def _note_oneofs(
    definitions: dict[str, Any],
    files: descriptor_pb2.FileDescriptorSet,
    routes: Iterable[HttpRoute],
) -> None:
    """OpenAPI 2.0 cannot say "exactly one of": the description and x-etax-oneof do."""
    groups: dict[str, dict[str, list[str]]] = {}
    for file in files.file:
        if not file.package.startswith("etax."):
            continue
        for message in file.message_type:
            found: dict[str, list[str]] = {}
            for field in message.field:
                if field.HasField("oneof_index") and not field.proto3_optional:
                    name = message.oneof_decl[field.oneof_index].name
                    found.setdefault(name, []).append(field.name)
            if found:
                groups[f".{file.package}.{message.name}"] = found
    request_types = {
        f"{r.policy.method}Body": _request_type(files, r.policy) for r in routes if r.body
    }
    for name, schema in definitions.items():
        oneofs = groups.get(request_types.get(name, ""), {}) or next(
            (g for full, g in groups.items() if full.rsplit(".", 1)[1] == name), {}
        )
        present = {
            group: fields
            for group, fields in oneofs.items()
            if set(fields) <= set(schema.get("properties", {}))
        }
        if not present:
            continue
        notes = [
            f"Set at most one of {', '.join(fields)} (oneof {group})."
            for group, fields in present.items()
        ]
        schema["description"] = "\n\n".join([*filter(None, [schema.get("description")]), *notes])
        schema["x-etax-oneof"] = present


def _request_type(files: descriptor_pb2.FileDescriptorSet, policy: RpcPolicy) -> str:
    package, service_name = policy.service.rsplit(".", 1)
    for file in files.file:
        if file.package != package:
            continue
        for service in file.service:
            if service.name == service_name:
                for method in service.method:
                    if method.name == policy.method:
                        return method.input_type
    return ""


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            yield ref.removeprefix("#/definitions/")
        for item in value.values():
            yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def _reachable(document: dict[str, Any], definitions: dict[str, Any]) -> set[str]:
    """The definitions the operations and responses use, directly or not."""
    pending = [*_refs(document["paths"]), *_refs(document["responses"])]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen or name not in definitions:
            continue
        seen.add(name)
        pending.extend(_refs(definitions[name]))
    return seen


# --- the CI check -------------------------------------------------------------------------


def route_problems(document: dict[str, Any], files: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """Every public route in the document with its method, path and policy; nothing else
    (no internal RPC, whether or not it has an HTTP binding)."""
    policies = contract_policies(files)
    routes = http_routes(files)
    operations = {
        (verb, path): operation
        for path, verbs in document.get("paths", {}).items()
        for verb, operation in verbs.items()
    }
    bound = {r.policy.full_name for r in routes}
    problems = [
        f"{p.full_name}: public but has no google.api.http binding"
        for p in policies
        if p.public and p.full_name not in bound
    ]
    public = {(r.verb, r.path): r for r in routes if r.policy.public}
    for key, route in public.items():
        problems += _operation_problems(operations.get(key), route)
    internal = {_operation_id(p) for p in policies if not p.public}
    for (verb, path), operation in operations.items():
        name = operation.get("operationId")
        if (verb, path) not in public:
            problems.append(f"{verb.upper()} {path} ({name}): not a public route")
        if name in internal:
            problems.append(f"{name}: an internal RPC in the document")
    public_services = {_simple(p.service) for p in policies if p.public}
    problems += [
        f"tag {tag.get('name')}: not a public service"
        for tag in document.get("tags", [])
        if tag.get("name") not in public_services
    ]
    return problems


def _operation_problems(operation: dict[str, Any] | None, route: HttpRoute) -> list[str]:
    where = f"{route.verb.upper()} {route.path} ({route.policy.full_name})"
    if operation is None:
        return [f"{where}: missing from the document"]
    problems = []
    if operation.get("operationId") != route.operation_id:
        problems.append(f"{where}: operationId {operation.get('operationId')!r}")
    if bool(operation.get("security")) != route.policy.needs_session:
        problems.append(f"{where}: security does not match access {route.policy.access.name}")
    guard = operation.get("x-etax-flood-guard", FloodGuard.NONE.name)
    if guard != route.policy.flood_guard.name:
        problems.append(f"{where}: flood guard {guard}, contract {route.policy.flood_guard.name}")
    return problems


def check(directory: Path = GEN_DIR, plugin: Path = PLUGIN) -> list[str]:
    """What CI checks of the served document: fresh, valid, exactly the public routes."""
    from openapi_spec_validator import validate  # noqa: PLC0415 - a dev dependency

    served_path = directory / DOCUMENT_NAME
    if not served_path.exists():
        return [f"{served_path} is missing: run `make protos`"]
    document = json.loads(served_path.read_text(encoding="utf-8"))
    fresh, files = generate(plugin)
    problems: list[str] = []
    for name, text in ((DOCUMENT_NAME, dumps(fresh)), (PAGE_NAME, page.render(fresh))):
        served = directory / name
        if not served.exists() or served.read_text(encoding="utf-8") != text:
            problems.append(f"{served}: not what the protos give now: run `make protos`")
    try:
        validate(document)
    except Exception as error:
        problems.append(f"{served_path}: not valid OpenAPI 2.0: {error}")
    return problems + route_problems(document, files)
