"""The API's docs page: one self-contained HTML page rendered from the OpenAPI document.

No scripts, fonts or styles from elsewhere: it works offline and behind any firewall. Each
problem type has an anchor here, which the ``type`` of a problem document links to.
"""

from __future__ import annotations

import json
from functools import cache
from html import escape
from typing import Any

from server.surfaces.http.problems import STATUS_OF, slug_of
from server.surfaces.http.rest.openapi import openapi_document
from server.surfaces.http.ws.messages import protocol_summary

__all__ = ["docs_page"]

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:70rem;margin:0 auto;padding:1rem 1.5rem;
color:#1d232a;background:#fff}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #dde3ea;padding-bottom:.2rem;margin-top:2.5rem}
code,pre{font:13px/1.4 ui-monospace,monospace;background:#f3f5f8;border-radius:4px}
code{padding:0 .25rem}pre{padding:.6rem;overflow-x:auto}
section.op{border:1px solid #dde3ea;border-radius:6px;padding:.2rem 1rem;margin:1rem 0}
.m{display:inline-block;min-width:4.2rem;font-weight:700;font-family:ui-monospace,monospace}
.GET{color:#1565c0}.POST{color:#2e7d32}.PUT{color:#8e5a00}.PATCH{color:#6a1b9a}
.DELETE{color:#c62828}table{border-collapse:collapse;width:100%;margin:.4rem 0}
td,th{border-bottom:1px solid #eef1f4;padding:.2rem .4rem;text-align:left;vertical-align:top}
nav a{margin-right:.8rem}
"""

_EXTRA_PROBLEMS = {
    "unauthorized": (401, "no or an unknown bearer token"),
    "csrf-check-failed": (403, "a cookie-authenticated change without its CSRF token"),
    "foreign-origin": (403, "a request from a web page of another site"),
    "misdirected-request": (421, "a Host header that is not this server's"),
    "invalid-input": (422, "a parameter is missing, unknown or of the wrong type"),
    "malformed-json": (400, "the body is not JSON"),
    "content-too-large": (413, "a JSON body over the limit"),
    "method-not-allowed": (405, "this path does not take that method"),
    "no-such-route": (404, "no route has this path"),
    "starting": (503, "the server is starting or stopping"),
}


def _schema_text(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_schema_text(part) for part in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(json.dumps(value) for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_schema_text(schema.get('items', {}))}"
    return str(kind)


def _fields_table(rows: list[tuple[str, str, str, str]]) -> str:
    if not rows:
        return ""
    cells = "".join(
        f"<tr><td><code>{escape(name)}</code></td><td>{escape(where)}</td>"
        f"<td>{escape(kind)}</td><td>{escape(text)}</td></tr>"
        for name, where, kind, text in rows
    )
    return f"<table><tr><th>name</th><th>in</th><th>type</th><th></th></tr>{cells}</table>"


def _operation_html(method: str, path: str, operation: dict[str, Any]) -> str:
    rows = [
        (
            p["name"],
            p["in"] + ("" if p.get("required") else ", optional"),
            _schema_text(p.get("schema", {})),
            p.get("description", ""),
        )
        for p in operation.get("parameters", [])
    ]
    body = operation.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        schema = content.get("schema", {})
        required = set(schema.get("required", []))
        for name, field in schema.get("properties", {}).items():
            where = f"body ({media})" + ("" if name in required else ", optional")
            rows.append((name, where, _schema_text(field), field.get("description", "")))
        if not schema.get("properties"):
            rows.append(("(body)", media, _schema_text(schema) if schema else "bytes", ""))
    answers = ", ".join(
        f"{status}" for status in operation.get("responses", {}) if status != "default"
    )
    description = operation.get("description", "").split("\n\n")
    return (
        f'<section class="op" id="{escape(operation["operationId"])}">'
        f'<h3><span class="m {method}">{method}</span> <code>{escape(path)}</code></h3>'
        f"<p>{'</p><p>'.join(escape(part) for part in description)}</p>"
        f"{_fields_table(rows)}<p>Answers: {escape(answers)}; otherwise a problem.</p>"
        "</section>"
    )


def _problems_html() -> str:
    seen: dict[str, tuple[int, str]] = dict(_EXTRA_PROBLEMS)
    for cls, status in STATUS_OF.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        seen.setdefault(slug_of(cls), (status, doc[0] if doc else cls.__name__))
    rows = "".join(
        f'<tr id="{escape(slug)}"><td><code>{escape(slug)}</code></td><td>{status}</td>'
        f"<td>{escape(text)}</td></tr>"
        for slug, (status, text) in sorted(seen.items())
    )
    return f"<table><tr><th>type</th><th>status</th><th></th></tr>{rows}</table>"


@cache
def docs_page() -> str:
    document = openapi_document()
    by_tag: dict[str, list[str]] = {}
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            html = _operation_html(method.upper(), path, operation)
            by_tag.setdefault(operation["tags"][0], []).append(html)
    sections = "".join(
        f'<h2 id="tag-{escape(tag)}">{escape(tag)}</h2>{"".join(ops)}'
        for tag, ops in by_tag.items()
    )
    nav = "".join(f'<a href="#tag-{escape(tag)}">{escape(tag)}</a>' for tag in by_tag)
    info = document["info"]
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>ProjectVM API {escape(info['version'])}</title><style>{STYLE}</style></head>"
        f"<body><h1>ProjectVM API</h1><p>{escape(info['description'])}</p>"
        '<p>The machine-readable description: <a href="/api/v1/openapi.json">'
        "/api/v1/openapi.json</a> (OpenAPI 3.1).</p>"
        f"<nav>{nav}<a href='#websocket'>websocket</a><a href='#problems'>problems</a></nav>"
        f"{sections}"
        f'<h2 id="websocket">The project WebSocket</h2>{protocol_summary()}'
        f'<h2 id="problems">Problems</h2><p>Every error is <code>application/problem+json'
        "</code> (RFC 9457): <code>detail</code> says what happened and what to do next, "
        "the same text an MCP client reads.</p>"
        f"{_problems_html()}</body></html>"
    )
