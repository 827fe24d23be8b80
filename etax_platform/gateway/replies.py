"""Errors the gateway makes itself, in the services' JSON shape (DESIGN.md, Errors).

No token, bad JSON, an unknown route, a body too large, a flood guard, no healthy
upstream: Envoy answers these locally, as text/plain by default. For JSON clients the
public listener's `local_reply_config` rewrites each into a google.rpc.Status, as the
transcoder prints the services' own errors: the gRPC code, the zh-CN text, ErrorInfo
(domain etax, a stable reason) and LocalizedMessage. gRPC and gRPC-Web clients keep
Envoy's grpc-status, which already says the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from etax_platform.errors import ERROR_DOMAIN, LOCALE, MEANINGS, Reason


@dataclass(frozen=True)
class _Reply:
    http_status: int
    reason: Reason
    message: str | None = None
    retry_after: str | None = None
    # Envoy's response flag that marks this case (else: the HTTP status alone).
    flag: str | None = None
    # The status the client sees, when it differs from Envoy's.
    answer_status: int | None = None


# Order matters: the first mapper that matches a reply rewrites it.
_REPLIES = (
    # A streaming route's circuit breaker is full (too many open watches).
    _Reply(503, Reason.TOO_MANY_REQUESTS, flag="UO", answer_status=429, retry_after="5s"),
    _Reply(401, Reason.UNAUTHENTICATED),
    _Reply(403, Reason.PERMISSION_DENIED),
    _Reply(404, Reason.NOT_FOUND, message="请求的接口不存在"),
    _Reply(413, Reason.MALFORMED_REQUEST, message="请求内容过大"),
    _Reply(429, Reason.TOO_MANY_REQUESTS, retry_after="1s"),
    # The transcoder: bad JSON, a wrong type, an unknown enum value or field.
    _Reply(400, Reason.MALFORMED_REQUEST),
    _Reply(503, Reason.PROVIDER_UNAVAILABLE),
    _Reply(504, Reason.PROVIDER_UNAVAILABLE),
)


def gateway_statuses() -> list[tuple[int, Reason]]:
    """The HTTP status and reason of each error the gateway makes itself (the API
    reference lists them beside the services' own)."""
    return [(reply.answer_status or reply.http_status, reply.reason) for reply in _REPLIES]


def status_body(reason: Reason, message: str | None = None, retry_after: str | None = None) -> str:
    """A google.rpc.Status as JSON, as the transcoder prints a service's error."""
    meaning = MEANINGS[reason]
    text = message or meaning.text
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason.value,
            "domain": ERROR_DOMAIN,
            "metadata": {"source": "gateway"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
            "locale": LOCALE,
            "message": text,
        },
    ]
    if retry_after is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": retry_after}
        )
    body = {"code": meaning.code.value[0], "message": text, "details": details}
    # Envoy reads the body as a format string: no '%' may appear in it.
    encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    assert "%" not in encoded
    return encoded


def _filter(reply: _Reply) -> dict[str, Any]:
    # A JSON request the transcoder already turned into gRPC carries the path it came
    # with (x-envoy-original-path); one it never reached still has its own content-type.
    # gRPC and gRPC-Web requests have neither, and keep Envoy's grpc-status.
    json_client = {
        "or_filter": {
            "filters": [
                {
                    "header_filter": {
                        "header": {"name": "x-envoy-original-path", "present_match": True}
                    }
                },
                {
                    "header_filter": {
                        "header": {
                            "name": "content-type",
                            "string_match": {"prefix": "application/grpc"},
                            "invert_match": True,
                            "treat_missing_header_as_empty": True,
                        }
                    }
                },
            ]
        }
    }
    case: dict[str, Any]
    if reply.flag is not None:
        case = {"response_flag_filter": {"flags": [reply.flag]}}
    else:
        case = {
            "status_code_filter": {
                "comparison": {
                    "op": "EQ",
                    "value": {
                        "default_value": reply.http_status,
                        "runtime_key": f"local_reply_{reply.http_status}",
                    },
                }
            }
        }
    return {"and_filter": {"filters": [json_client, case]}}


def local_reply_config() -> dict[str, Any]:
    mappers = []
    for reply in _REPLIES:
        mapper: dict[str, Any] = {
            "filter": _filter(reply),
            "body_format_override": {
                "text_format_source": {
                    "inline_string": status_body(reply.reason, reply.message, reply.retry_after)
                },
                "content_type": "application/json",
            },
        }
        if reply.answer_status is not None:
            mapper["status_code"] = reply.answer_status
        mappers.append(mapper)
    return {"mappers": mappers}
