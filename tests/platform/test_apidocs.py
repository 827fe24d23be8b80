"""The OpenAPI document of the public JSON API and its reference page (issue 12, item 7).

The document is generated from the protos at `make protos` (gen/openapi/); these tests
read it and the contract (descriptor set) it must agree with. The gateway serving it is
tested in tests/gateway/test_openapi.py.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from etax_platform.apidocs import DOCUMENT_NAME, PAGE_NAME, document, page
from etax_platform.errors import MEANINGS
from etax_platform.gateway.config import CORS_METHODS
from etax_platform.policy import Access, FloodGuard, contract_policies

GEN = document.GEN_DIR


@pytest.fixture(scope="module")
def files() -> Any:
    return document.load_descriptor_set(document.REPO_ROOT / "gen" / "etax_descriptor.pb")


@pytest.fixture(scope="module")
def served() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GEN / DOCUMENT_NAME).read_text(encoding="utf-8"))
    return loaded


def _operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (verb, path): operation
        for path, verbs in doc["paths"].items()
        for verb, operation in verbs.items()
    }


def test_the_ci_check_passes_fresh_valid_and_exactly_the_public_routes() -> None:
    """What `make lint` runs: regenerated from the protos as they are, the document and
    the page are what gen/ holds (and the gateway serves), valid, and route-exact."""
    assert document.check() == []


def test_document_is_valid_openapi_2(served: dict[str, Any]) -> None:
    validate(served)
    assert served["swagger"] == "2.0"
    assert "电子税务局" in served["info"]["title"]
    assert "e-tax" in served["info"]["title"]
    # Served by the gateway it describes: no fixed host.
    assert "host" not in served


def test_every_public_route_is_in_it_with_its_method_path_and_policy(
    served: dict[str, Any], files: Any
) -> None:
    """From the contract (policies + google.api.http), not from a list."""
    operations = _operations(served)
    routes = [r for r in document.http_routes(files) if r.policy.public]
    assert len(routes) == len([p for p in contract_policies(files) if p.public])
    for route in routes:
        operation = operations[(route.verb, route.path)]
        assert operation["operationId"] == route.operation_id
        assert operation["x-etax-rpc"] == route.policy.full_name
        assert operation["x-etax-access"] == route.policy.access.name
        expected_security = [{"bearer": []}] if route.policy.needs_session else []
        assert operation["security"] == expected_security, route.path
        assert operation.get("x-etax-flood-guard", "NONE") == route.policy.flood_guard.name
    assert len(operations) == len(routes)
    # What clients rely on, spelled out.
    login = operations[("post", "/v1/auth/logins")]
    assert (login["security"], login["x-etax-flood-guard"]) == ([], FloodGuard.LOGIN.name)
    assert operations[("post", "/v1/sms/codes")]["x-etax-flood-guard"] == FloodGuard.CODE.name
    assert operations[("get", "/v1/me/profile")]["security"] == [{"bearer": []}]
    confirm = operations[("post", "/v1/auth/qr-logins:confirm")]
    assert confirm["x-etax-access"] == Access.TRUSTED_APP_SESSION.name
    assert confirm["security"] == [{"bearer": []}]
    assert served["securityDefinitions"]["bearer"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": served["securityDefinitions"]["bearer"]["description"],
    }


def test_no_internal_rpc_is_in_it(served: dict[str, Any], files: Any) -> None:
    internal = [p for p in contract_policies(files) if not p.public]
    assert internal
    ids = {op["operationId"] for op in _operations(served).values()}
    for policy in internal:
        assert f"{policy.service.rsplit('.', 1)[1]}_{policy.method}" not in ids
    assert not any(tag["name"].startswith(("Internal", "SmsOutbox")) for tag in served["tags"])
    # Nor the messages only internal RPCs use.
    for message in ("VerifyCodeRequest", "CheckAccessRequest", "OutboxMessage", "Person"):
        assert message not in served["definitions"]


def test_the_check_finds_a_missing_route_an_internal_one_and_a_wrong_policy(
    served: dict[str, Any], files: Any
) -> None:
    doctored = copy.deepcopy(served)
    del doctored["paths"]["/v1/auth/logins"]
    doctored["paths"]["/v1/sms/codes"]["post"]["security"] = [{"bearer": []}]
    doctored["paths"]["/v1/me/profile"]["get"].pop("security")
    doctored["paths"]["/v1/auth/keys"]["get"]["x-etax-flood-guard"] = "LOGIN"
    doctored["paths"]["/v1/internal/verify"] = {
        "post": {"operationId": "InternalSmsService_VerifyCode", "responses": {}}
    }
    doctored["tags"].append({"name": "InternalSmsService"})
    problems = "\n".join(document.route_problems(doctored, files))
    assert "POST /v1/auth/logins (etax.auth.v1.AuthService/StartLogin): missing" in problems
    assert "POST /v1/sms/codes (etax.sms.v1.SmsService/SendCode): security" in problems
    assert "GET /v1/me/profile (etax.auth.v1.AccountService/GetProfile): security" in problems
    assert "GetPublicKeys): flood guard LOGIN" in problems
    assert "POST /v1/internal/verify (InternalSmsService_VerifyCode): not a public" in problems
    assert "InternalSmsService_VerifyCode: an internal RPC in the document" in problems
    assert "tag InternalSmsService: not a public service" in problems
    assert document.route_problems(served, files) == []


def test_the_check_finds_a_stale_document(tmp_path: Path) -> None:
    for name in (DOCUMENT_NAME, PAGE_NAME):
        (tmp_path / name).write_bytes((GEN / name).read_bytes())
    stale = json.loads((tmp_path / DOCUMENT_NAME).read_text(encoding="utf-8"))
    stale["info"]["version"] = "v0"
    (tmp_path / DOCUMENT_NAME).write_text(document.dumps(stale), encoding="utf-8")
    (problem,) = document.check(tmp_path)
    assert problem.endswith("not what the protos give now: run `make protos`")


def test_fields_are_what_the_transcoder_prints(served: dict[str, Any]) -> None:
    """preserve_proto_field_names, enums by name, Timestamps as date-time strings."""
    definitions = served["definitions"]
    session = definitions["Session"]["properties"]
    assert {"access_token", "refresh_token", "access_token_expires_at"} <= set(session)
    assert session["access_token_expires_at"] == {"type": "string", "format": "date-time"}
    assert definitions["Entry"]["type"] == "string"
    assert "ENTRY_NATURAL_PERSON" in definitions["Entry"]["enum"]
    # A path parameter is not repeated in the body (body: "*" takes the rest).
    body = _operations(served)[("post", "/v1/auth/logins/{challenge_id}:completeWithCode")]
    (path_param, body_param) = body["parameters"]
    assert (path_param["name"], path_param["in"]) == ("challenge_id", "path")
    schema = definitions[body_param["schema"]["$ref"].rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {"code"}
    # 64-bit integers are strings (none today); no camelCase name anywhere.
    for schema in definitions.values():
        for field in schema.get("properties", {}).values():
            if field.get("format") in ("int64", "uint64"):
                assert field["type"] == "string"
    assert "accessToken" not in json.dumps(definitions)


def test_a_oneof_is_said_in_words(served: dict[str, Any]) -> None:
    reset = served["definitions"]["CompletePasswordResetBody"]
    assert reset["x-etax-oneof"] == {"proof": ["code", "face_proof"]}
    assert "at most one of code, face_proof" in reset["description"]
    assert served["definitions"]["SendCodeRequest"]["x-etax-oneof"] == {
        "recipient": ["phone", "email"]
    }


def test_a_streaming_rpc_is_newline_delimited_json(served: dict[str, Any]) -> None:
    watch = _operations(served)[("get", "/v1/face/tickets/{ticket_id}:watch")]
    assert watch["x-etax-streaming"] == "newline-delimited JSON"
    assert watch["responses"]["200"]["schema"] == {"$ref": "#/definitions/WatchTicketResponse"}


def test_errors_are_one_status_schema_with_every_reason_per_http_status(
    served: dict[str, Any],
) -> None:
    """DESIGN.md, Errors: google.rpc.Status with ErrorInfo and LocalizedMessage, documented
    once; every operation refers to it for each status a client must handle."""
    responses = served["responses"]
    by_status = {r["x-etax-http-status"]: r for r in responses.values()}
    assert set(by_status) == {400, 401, 403, 404, 409, 413, 429, 500, 503, 504}
    for reason, meaning in MEANINGS.items():
        status = document.HTTP_STATUS[meaning.code]
        assert reason.value in by_status[status]["x-etax-reasons"], reason
        assert meaning.text in by_status[status]["description"]
    # The gateway's own replies: a body too large is 413, its flood guard 429.
    assert by_status[413]["x-etax-reasons"] == ["MALFORMED_REQUEST"]
    assert "TOO_MANY_REQUESTS" in by_status[429]["x-etax-reasons"]
    assert "do not refresh" in by_status[400]["description"]
    assert "Refresh the session once" in by_status[401]["description"]
    for response in responses.values():
        assert response["schema"] == {"$ref": "#/definitions/Status"}
    for operation in _operations(served).values():
        refs = {k: v["$ref"] for k, v in operation["responses"].items() if k != "200"}
        assert refs == {
            str(status): f"#/responses/{name}"
            for name, r in responses.items()
            for status in [r["x-etax-http-status"]]
        }
    detail = served["definitions"]["StatusDetail"]["properties"]
    assert detail["@type"]["enum"] == [
        "type.googleapis.com/google.rpc.ErrorInfo",
        "type.googleapis.com/google.rpc.LocalizedMessage",
        "type.googleapis.com/google.rpc.RetryInfo",
    ]
    assert detail["reason"] == {"$ref": "#/definitions/ErrorReason"}
    assert served["definitions"]["ErrorReason"]["enum"] == [r.value for r in MEANINGS]
    # Each reason's comment from errors.proto.
    assert (
        "D4: the document number is not registered"
        in (served["definitions"]["ErrorReason"]["description"])
    )


def test_cors_allows_every_method_of_the_api(served: dict[str, Any]) -> None:
    verbs = {verb.upper() for verb, _ in _operations(served)}
    assert verbs <= set(CORS_METHODS)


# --- the reference page -------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> str:
    return (GEN / PAGE_NAME).read_text(encoding="utf-8")


def test_page_lists_every_operation_with_its_policy_and_fields(
    served: dict[str, Any], reference: str
) -> None:
    assert reference == page.render(served)
    for (verb, path), operation in _operations(served).items():
        anchor = f'<article id="op-{operation["operationId"]}">'
        assert anchor in reference
        article = reference.split(anchor, 1)[1].split("</article>", 1)[0]
        assert f">{verb.upper()}</span> <code>{path}</code>" in article
        assert "<dt>access</dt>" in article and "<dt>flood guard</dt>" in article
        assert "<h4>Request</h4>" in article and "<h4>Response 200</h4>" in article
        if operation["security"]:
            assert "Authorization: Bearer" in article
    # Grouped by service, the errors and every schema.
    for tag in served["tags"]:
        assert f'<section id="tag-{tag["name"]}">' in reference
    for response in served["responses"].values():
        assert f'<section id="status-{response["x-etax-http-status"]}">' in reference
    assert "CREDENTIALS_INVALID: 账号或密码错误" in reference
    for name in served["definitions"]:
        assert f'<section id="schema-{name}">' in reference
    login = reference.split('<article id="op-AuthService_StartLogin">', 1)[1]
    login = login.split("</article>", 1)[0]
    assert "<code>account</code>" in login and "Document number, phone or username." in login


def test_page_loads_nothing_and_its_policy_allows_only_its_style(reference: str) -> None:
    assert "<script" not in reference
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", reference)
    assert "@import" not in reference and "url(" not in reference
    policy = page.content_security_policy(reference)
    assert policy.startswith("default-src 'none'; style-src 'sha256-")
    assert "script-src" not in policy and "unsafe" not in policy
    assert "frame-ancestors 'none'" in policy


def test_page_escapes_what_the_protos_say() -> None:
    doc = {
        "info": {"title": "<t>", "description": "a <b> & `c<d>`"},
        "paths": {
            "/x": {
                "get": {
                    "operationId": "S_M",
                    "tags": ["S"],
                    "summary": "<script>alert(1)</script>",
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
        "tags": [{"name": "S", "description": "- <li>"}],
    }
    rendered = page.render(doc)
    assert "<script>" not in rendered and "&lt;script&gt;" in rendered
    assert "<code>c&lt;d&gt;</code>" in rendered and "a &lt;b&gt; &amp;" in rendered


# --- docs/api.md stays true to the document ----------------------------------------------

_MENTION = re.compile(r"\b(GET|POST|PUT|DELETE|get|post|put|delete)\s+(/[^\s'`?]+)")
# What the gateway answers itself (not operations of the API).
_GATEWAY_PATHS = {"/openapi.json", "/api/"}


def test_docs_api_md_mentions_only_real_operations_and_every_one(served: dict[str, Any]) -> None:
    """Every `METHOD /path` docs/api.md shows (shell variables for path parameters) is an
    operation of the document, and every operation appears in it."""
    patterns = {
        (verb, path): re.compile(re.sub(r"\\\{\w+\\\}", r"[^/:?\\s]+", re.escape(path)) + "$")
        for (verb, path) in _operations(served)
    }
    text = (document.REPO_ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    seen: set[tuple[str, str]] = set()
    unknown = []
    for verb, path in _MENTION.findall(text):
        if path in _GATEWAY_PATHS:
            continue
        hits = {k for k, rx in patterns.items() if k[0] == verb.lower() and rx.match(path)}
        if not hits:
            unknown.append(f"{verb} {path}")
        seen |= hits
    assert unknown == []
    assert sorted(set(patterns) - seen) == []
    # The reasons and enum values it names are real ones (and settings are settings).
    values: set[str] = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            values.update(v for v in node.get("enum", []) if isinstance(v, str))
            for item in node.values():
                collect(item)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    collect(served)
    named = set(re.findall(r"`([A-Z][A-Z0-9_]{4,})`", text))
    assert {r.value for r in MEANINGS} & named
    assert {n for n in named if n not in values and not n.startswith("ETAX_")} == set()
