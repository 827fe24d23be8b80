"""The API reference page: static HTML made from the OpenAPI document at `make protos`.

No script, nothing from elsewhere: one inline stylesheet, which the page's
Content-Security-Policy allows by its hash (`content_security_policy`), so the gateway can
serve it with `default-src 'none'`. Operations are grouped by service, each with method,
path, access, flood guard, request and response fields and the error statuses; then the
errors (reasons per HTTP status) and every schema.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from typing import Any

STYLE = """
body{font:15px/1.5 system-ui,"PingFang SC","Microsoft YaHei","Noto Sans CJK SC",sans-serif;
margin:0 auto;max-width:72rem;padding:1rem 2rem;color:#1d2430}
code{font:13px ui-monospace,Menlo,Consolas,monospace;background:#f1f3f6;padding:0 .2em}
h2{border-bottom:2px solid #c5ccd6;margin-top:2.5rem}
article{border:1px solid #d8dde4;border-radius:6px;padding:.2rem 1rem 1rem;margin:1rem 0}
h3 .verb{display:inline-block;min-width:4.2em;color:#fff;background:#3d6fb6;
border-radius:4px;padding:0 .4em;font-size:.8em;text-align:center}
h3 .verb.get{background:#2f855a}h3 .verb.delete{background:#b83232}
h3 .verb.put{background:#a86b00}
table{border-collapse:collapse;width:100%;margin:.4rem 0}
th,td{text-align:left;vertical-align:top;border-bottom:1px solid #e3e7ec;padding:.25rem .5rem}
th{background:#f6f7f9}
dl.policy{display:grid;grid-template-columns:max-content auto;gap:.1rem 1rem}
dl.policy dt{font-weight:600}dl.policy dd{margin:0}
td p{margin:0}td ul{margin:0;padding-left:1.2em}.muted{color:#5b6675}
nav li li{display:inline-block;margin-right:1.2em}
"""

_PAGE_STYLE = re.compile(r"<style>(.*?)</style>", re.DOTALL)


def content_security_policy(page: str) -> str:
    """A strict policy for the page as served: nothing but its own inline stylesheet."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(style.encode()).digest()).decode() + "'"
        for style in _PAGE_STYLE.findall(page)
    ]
    return (
        f"default-src 'none'; style-src {' '.join(hashes) or chr(39) + 'none' + chr(39)}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _inline(text: str) -> str:
    """Escaped text with `code` and **strong** spans."""
    escaped = _e(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def prose(text: str) -> str:
    """Paragraphs and "- " lists of a description (comments from the protos)."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        paragraph: list[str] = []
        items: list[str] = []
        for line in block.splitlines():
            stripped = line.strip()
            if stripped.startswith("- "):
                items.append(stripped[2:])
            elif items:
                items[-1] += " " + stripped
            elif stripped:
                paragraph.append(stripped)
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
    return "".join(out)


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/definitions/"):
        return ref.removeprefix("#/definitions/")
    return None


def _type(schema: dict[str, Any]) -> str:
    name = _ref_name(schema)
    if name is not None:
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    kind = schema.get("type", "object")
    if kind == "array":
        return "array of " + _type(schema.get("items", {}))
    if kind == "object" and "additionalProperties" in schema:
        return "map of " + _type(schema["additionalProperties"])
    text = _e(kind)
    if "format" in schema:
        text += f" <span class=muted>({_e(schema['format'])})</span>"
    if "enum" in schema:
        text += ": " + ", ".join(f"<code>{_e(v)}</code>" for v in schema["enum"])
    return text


def _description(schema: dict[str, Any]) -> str:
    text = " ".join(
        part for part in (schema.get("title", ""), schema.get("description", "")) if part
    )
    return prose(text) if text else ""


def _fields(schema: dict[str, Any], definitions: dict[str, Any]) -> str:
    """A table of an object's fields (following one $ref), or its type."""
    name = _ref_name(schema)
    target = definitions.get(name, {}) if name else schema
    properties = target.get("properties")
    if not properties:
        return f"<p>{_type(schema)}</p>" if name else "<p class=muted>(empty object)</p>"
    required = set(target.get("required", []))
    rows = "".join(
        f"<tr><td><code>{_e(field)}</code>{' <em>required</em>' if field in required else ''}"
        f"</td><td>{_type(sub)}</td><td>{_description(sub)}</td></tr>"
        for field, sub in properties.items()
    )
    caption = ""
    if name:
        caption = f'<p class=muted>Schema <a href="#schema-{_e(name)}">{_e(name)}</a></p>'

    head = "<tr><th>field</th><th>type</th><th>description</th></tr>"
    return f"{caption}<table>{head}{rows}</table>"


def _request(operation: dict[str, Any], definitions: dict[str, Any]) -> str:
    parts: list[str] = []
    simple = [p for p in operation.get("parameters", []) if p.get("in") != "body"]
    if simple:
        rows = "".join(
            f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}"
            f"{' (required)' if p.get('required') else ''}</td><td>{_type(p)}</td>"
            f"<td>{_description(p)}</td></tr>"
            for p in simple
        )
        parts.append(
            "<table><tr><th>parameter</th><th>in</th><th>type</th><th>description</th></tr>"
            f"{rows}</table>"
        )
    for parameter in operation.get("parameters", []):
        if parameter.get("in") == "body":
            parts.append("<p>JSON body:</p>" + _fields(parameter["schema"], definitions))
    return "".join(parts) or "<p class=muted>No parameters.</p>"


def _without_policy_notes(description: str) -> str:
    """The description without the access and flood-guard notes the document appends for
    generic tools: the page lists them itself."""
    return "\n\n".join(
        block
        for block in re.split(r"\n\s*\n", description)
        if not block.startswith(("Access: ", "Flood guard: "))
    )


def _operation(path: str, verb: str, operation: dict[str, Any], document: dict[str, Any]) -> str:
    definitions = document.get("definitions", {})
    op_id = operation["operationId"]
    access = operation.get("x-etax-access", "")
    auth = (
        "<code>Authorization: Bearer &lt;access_token&gt;</code>"
        if operation.get("security")
        else "none (anonymous)"
    )
    policy = [
        ("access", f"{_e(access)}: {auth}"),
        ("flood guard", _e(operation.get("x-etax-flood-guard", "none"))),
        ("gRPC", f"<code>{_e(operation.get('x-etax-rpc', ''))}</code>"),
    ]
    if "x-etax-streaming" in operation:
        policy.append(("streaming", _e(operation["x-etax-streaming"])))
    ok = operation["responses"]["200"]
    summary = operation.get("summary", "")
    errors = " ".join(
        f'<a href="#status-{status}">{status}</a>'
        for status in operation["responses"]
        if status != "200"
    )
    policy.append(("errors", errors))
    return (
        f'<article id="op-{_e(op_id)}"><h3><span class="verb {_e(verb)}">{_e(verb.upper())}'
        f"</span> <code>{_e(path)}</code></h3>"
        + (f"<p><strong>{_inline(summary)}</strong></p>" if summary else "")
        + prose(_without_policy_notes(operation.get("description", "")))
        + '<dl class="policy">'
        + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in policy)
        + "</dl><h4>Request</h4>"
        + _request(operation, definitions)
        + "<h4>Response 200</h4>"
        + prose(ok.get("description", ""))
        + (_fields(ok["schema"], definitions) if "schema" in ok else "")
        + "</article>"
    )


def _schema(name: str, schema: dict[str, Any], definitions: dict[str, Any]) -> str:
    body = _description(schema)
    if "enum" in schema:
        body += "<p>" + ", ".join(f"<code>{_e(v)}</code>" for v in schema["enum"]) + "</p>"
    elif schema.get("properties"):
        body += _fields(schema, definitions)
    return f'<section id="schema-{_e(name)}"><h3>{_e(name)}</h3>{body}</section>'


def render(document: dict[str, Any]) -> str:
    info = document["info"]
    paths: dict[str, dict[str, Any]] = document.get("paths", {})
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, verbs in paths.items():
        for verb, operation in verbs.items():
            for tag in operation.get("tags", ["other"]):
                by_tag.setdefault(tag, []).append((path, verb, operation))
    tags = {t["name"]: t for t in document.get("tags", [])}
    toc = "".join(
        f'<li><a href="#tag-{_e(tag)}">{_e(tag)}</a><ul>'
        + "".join(
            f'<li><a href="#op-{_e(op["operationId"])}">{_e(verb.upper())} {_e(path)}</a></li>'
            for path, verb, op in operations
        )
        + "</ul></li>"
        for tag, operations in by_tag.items()
    )
    services = "".join(
        f'<section id="tag-{_e(tag)}"><h2>{_e(tag)}</h2>'
        + prose(tags.get(tag, {}).get("description", ""))
        + "".join(_operation(path, verb, op, document) for path, verb, op in operations)
        + "</section>"
        for tag, operations in by_tag.items()
    )
    errors = "".join(
        f'<section id="status-{_e(response["x-etax-http-status"])}">'
        f"<h3>{_e(response['x-etax-http-status'])} {_e(name)}</h3>"
        + prose(response.get("description", ""))
        + "</section>"
        for name, response in document.get("responses", {}).items()
    )
    definitions = document.get("definitions", {})
    schemas = "".join(_schema(n, s, definitions) for n, s in definitions.items())
    return (
        '<!DOCTYPE html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(info['title'])}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{_e(info['title'])}</h1>"
        f"<p class=muted>version {_e(info.get('version', ''))} · "
        '<a href="/openapi.json">openapi.json</a> (OpenAPI 2.0)</p>'
        f"{prose(info.get('description', ''))}</header>"
        f'<nav><h2>Operations 接口</h2><ul>{toc}<li><a href="#errors">Errors 错误</a></li>'
        '<li><a href="#schemas">Schemas</a></li></ul></nav>'
        f"<main>{services}"
        f'<section id="errors"><h2>Errors 错误</h2>'
        "<p>Every error body is a "
        '<a href="#schema-Status">Status</a>: branch on ErrorInfo.reason, show '
        "LocalizedMessage.message.</p>"
        f"{errors}</section>"
        f'<section id="schemas"><h2>Schemas</h2>{schemas}</section></main>'
        "</body></html>\n"
    )
