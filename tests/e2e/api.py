"""The public listener as its real callers use it: JSON (the APP backend) and gRPC-Web (the
web page), one call shape for both.

    web = Client(gateway, "grpc-web")
    reply = web.call("AuthService.StartLogin", {"entry": "ENTRY_NATURAL_PERSON", ...})
    reply.ok, reply.body["challenge_id"], reply.reason, reply.text

JSON calls go to the RPC's `google.api.http` path (path fields filled in, the rest as body
or query), exactly what the transcoder serves; gRPC-Web calls post the binary message to
/<service>/<method>. Either way the answer is a `Reply` whose body is the response message
as the transcoder prints it (proto field names, enums by name) and whose error is the
google.rpc.Status the service attached (ErrorInfo reason, zh-CN LocalizedMessage,
RetryInfo).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import quote

import httpx
from etax.auth.v1 import auth_pb2  # noqa: F401 - registers the services in the pool
from etax.binding.v1 import binding_pb2  # noqa: F401
from etax.face.v1 import face_pb2  # noqa: F401
from etax.sms.v1 import sms_pb2  # noqa: F401
from google.api import annotations_pb2
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2, status_pb2  # noqa: F401 - detail types for printing

from tests.harness.gateway import RunningGateway, grpc_web_call

Protocol = Literal["json", "grpc-web"]
PACKAGES = {
    "AuthService": "etax.auth.v1",
    "AccountService": "etax.auth.v1",
    "BindingService": "etax.binding.v1",
    "SmsService": "etax.sms.v1",
    "FaceService": "etax.face.v1",
}
_PATH_FIELD = re.compile(r"\{([\w.]+)\}")
# HTTP status -> gRPC code, for answers that carry no google.rpc.Status (Envoy's own).
_HTTP_TO_GRPC = {400: 3, 401: 16, 403: 7, 404: 12, 429: 8, 503: 14, 504: 4}


@dataclass(frozen=True)
class Reply:
    """One answer of the public listener, whichever protocol carried it."""

    http_status: int
    grpc_status: int
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.grpc_status == 0

    def __getitem__(self, key: str) -> Any:
        assert self.ok, f"expected success, got {self}"
        return self.body[key]

    def _detail(self, kind: str) -> dict[str, Any]:
        for detail in self.body.get("details", []):
            if detail.get("@type", "").endswith(f"/google.rpc.{kind}"):
                found: dict[str, Any] = detail
                return found
        return {}

    @property
    def reason(self) -> str:
        """ErrorInfo.reason ("" for a success or an error without one)."""
        return str(self._detail("ErrorInfo").get("reason", ""))

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._detail("ErrorInfo").get("metadata", {}))

    @property
    def text(self) -> str:
        """What the user is shown: the zh-CN LocalizedMessage."""
        return str(self._detail("LocalizedMessage").get("message", ""))

    @property
    def retry_delay(self) -> timedelta | None:
        delay = self._detail("RetryInfo").get("retry_delay")
        return None if delay is None else timedelta(seconds=float(delay.rstrip("s")))

    def expect(self, reason: str, text: str | None = None) -> Reply:
        """Asserts a failure with this reason (and this user text)."""
        assert not self.ok, f"expected {reason}, got success {self.body}"
        assert self.reason == reason, f"expected {reason}, got {self}"
        if text is not None:
            assert self.text == text, f"expected text {text!r}, got {self.text!r}"
        return self


def method_descriptor(name: str) -> MethodDescriptor:
    """ "AuthService.StartLogin" -> the method of etax.auth.v1.AuthService."""
    service, method = name.split(".")
    found: MethodDescriptor = descriptor_pool.Default().FindMethodByName(
        f"{PACKAGES[service]}.{service}.{method}"
    )
    return found


def _message_dict(message: Any) -> dict[str, Any]:
    """As the transcoder prints it: proto field names, every field, enums by name."""
    printed: dict[str, Any] = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return printed


class Client:
    """A caller of one gateway's public listener over JSON or gRPC-Web."""

    def __init__(self, gateway: RunningGateway, protocol: Protocol = "json") -> None:
        self.gateway = gateway
        self.protocol = protocol
        self._http = httpx.Client(timeout=20)

    @property
    def province(self) -> str:
        return self.gateway.settings.province

    def close(self) -> None:
        self._http.close()

    def call(
        self, name: str, request: dict[str, Any] | None = None, *, token: str | None = None
    ) -> Reply:
        method = method_descriptor(name)
        # Parsing first refuses a misspelt field here instead of at the gateway.
        request_class = message_factory.GetMessageClass(method.input_type)
        message = json_format.ParseDict(request or {}, request_class())
        headers = {"authorization": f"Bearer {token}"} if token else {}
        if self.protocol == "json":
            return self._json(method, request or {}, headers)
        return self._grpc_web(method, message, headers)

    # --- JSON (grpc_json_transcoder) ----------------------------------------------------

    def _json(
        self, method: MethodDescriptor, request: dict[str, Any], headers: dict[str, str]
    ) -> Reply:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        template: str = getattr(rule, verb)
        rest = dict(request)

        def fill(match: re.Match[str]) -> str:
            return quote(str(rest.pop(match[1])), safe="")

        path = _PATH_FIELD.sub(fill, template)
        if rule.body == "*":
            response = self._http.request(
                verb.upper(), self.gateway.url(path), json=rest, headers=headers
            )
        else:
            response = self._http.request(
                verb.upper(), self.gateway.url(path), params=_query(rest), headers=headers
            )
        try:
            body = response.json()
        except json.JSONDecodeError:
            body = {"raw": response.text}
        if response.status_code == 200:
            return Reply(200, 0, body, dict(response.headers))
        code = body.get("code") if isinstance(body, dict) else None
        grpc_status = int(code) if code else _HTTP_TO_GRPC.get(response.status_code, 2)
        return Reply(response.status_code, grpc_status, body, dict(response.headers))

    # --- gRPC-Web ---------------------------------------------------------------------------

    def _grpc_web(self, method: MethodDescriptor, message: Any, headers: dict[str, str]) -> Reply:
        url = self.gateway.url(f"/{method.containing_service.full_name}/{method.name}")
        reply = grpc_web_call(url, message.SerializeToString(), headers, 20, self._http)
        response_headers = dict(reply.headers)
        if reply.http_status != 200:
            status = _HTTP_TO_GRPC.get(reply.http_status, 2)
            return Reply(reply.http_status, status, {"raw": ""}, response_headers)
        if reply.grpc_status == 0:
            response_class = message_factory.GetMessageClass(method.output_type)
            (payload,) = reply.messages
            return Reply(
                200, 0, _message_dict(response_class.FromString(payload)), response_headers
            )
        details = reply.trailers.get(
            "grpc-status-details-bin", reply.headers.get("grpc-status-details-bin")
        )
        body: dict[str, Any] = {"code": reply.grpc_status}
        if details:
            status = status_pb2.Status.FromString(
                base64.b64decode(details + "=" * (-len(details) % 4))
            )
            body = _message_dict(status)
        return Reply(200, reply.grpc_status, body, response_headers)


def _query(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """Query parameters as the transcoder reads them: repeated fields repeat the key."""
    pairs: list[tuple[str, str]] = []
    for key, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((key, str(item).lower() if isinstance(item, bool) else str(item)))
    return pairs
