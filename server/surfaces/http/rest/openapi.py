"""The OpenAPI 3.1 document of ``/api/v1``, generated from the route table and the models.

Nothing here is written by hand per operation: the parameters and bodies are the request
models' fields (the same the MCP tools take), the answers the result models, the summaries
and descriptions the request models' docstrings.
"""

from __future__ import annotations

import copy
import inspect
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from server import __version__
from server.core.service import ENDPOINTS
from server.surfaces.http.problems import PROBLEM_JSON
from server.surfaces.http.rest.routes import ROUTES, Body, Route, Style

__all__ = ["openapi_document"]

REF = "#/components/schemas/{model}"

_STATUS_TEXT = {
    200: "the result",
    201: "created; Location names it",
    202: "accepted and still running; Location names it",
    204: "done (also when it was already gone)",
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; detail says what happened and what to do next",
    "properties": {
        "type": {"type": "string", "description": "a link to this problem in the API docs"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "error": {"type": "string", "description": "the error's class in ProjectVM"},
        "operation": {"type": "string"},
        "current_sha256": {"type": ["string", "null"]},
        "changed_by": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["type", "title", "status", "detail"],
}


def _models() -> list[type[BaseModel]]:
    models: list[type[BaseModel]] = []
    for endpoint in ENDPOINTS.values():
        for model in (endpoint.request, endpoint.result):
            if model not in models:
                models.append(model)
    return models


@cache
def _components() -> tuple[dict[type[BaseModel], str], dict[str, Any]]:
    """Every model's reference (two models may share a name) and the components."""
    pairs: list[tuple[type[BaseModel], Literal["serialization"]]] = [
        (model, "serialization") for model in _models()
    ]
    keys, top = models_json_schema(pairs, ref_template=REF)
    refs = {model: keys[(model, mode)]["$ref"] for model, mode in pairs}
    return refs, top.get("$defs", {})


def _schemas() -> tuple[dict[type[BaseModel], dict[str, Any]], dict[str, Any]]:
    """Every model's own schema (with references into components) and the components."""
    refs, definitions = _components()
    return {model: definitions[ref.rsplit("/", 1)[-1]] for model, ref in refs.items()}, definitions


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _components()[0][model]}


def _field_schema(route: Route, name: str) -> dict[str, Any]:
    by_model, _ = _schemas()
    schema = by_model[ENDPOINTS[route.operation].request]
    return copy.deepcopy(schema.get("properties", {}).get(name, {}))


def _query_fields(route: Route) -> list[str]:
    fields = list(ENDPOINTS[route.operation].request.model_fields)
    taken = set(route.path_fields)
    if route.body in (Body.JSON, Body.FIELD):
        return []
    if route.style == Style.FILE_WRITE:
        taken |= {"content", "encoding", "if_match"}
    if route.style == Style.REMOVED:
        taken |= {"if_match"}
    return [name for name in fields if name not in taken]


def _parameters(route: Route) -> list[dict[str, Any]]:
    request = ENDPOINTS[route.operation].request
    parameters: list[dict[str, Any]] = []
    for name in route.path_fields:
        schema = _field_schema(route, name)
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": request.model_fields[name].description or name,
                "schema": schema,
            }
        )
    for name in _query_fields(route):
        field = request.model_fields[name]
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": field.is_required(),
            "schema": _field_schema(route, name),
        }
        if field.description:
            parameter["description"] = field.description
        parameters.append(parameter)
    if "if_match" in request.model_fields and route.method != "GET":
        parameters.append(
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "description": "the sha256 (ETag) the file must still have; else 412",
                "schema": {"type": "string"},
            }
        )
        if route.style == Style.FILE_WRITE:
            parameters.append(
                {
                    "name": "If-None-Match",
                    "in": "header",
                    "required": False,
                    "description": "'*': only create the file, never replace one (else 412)",
                    "schema": {"type": "string", "enum": ["*"]},
                }
            )
    if route.style == Style.FILE_READ:
        parameters.append(
            {
                "name": "Range",
                "in": "header",
                "required": False,
                "description": "one byte range (bytes=START-END, START-, -LAST_N): 206",
                "schema": {"type": "string"},
            }
        )
        parameters.append(
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": "the ETag you hold: 304 when the file still has it",
                "schema": {"type": "string"},
            }
        )
    if route.style == Style.REMOVED:
        parameters.append(
            {
                "name": "Prefer",
                "in": "header",
                "required": False,
                "description": "'return=representation': answer 200 with the result, not 204",
                "schema": {"type": "string"},
            }
        )
    return parameters


def _request_body(route: Route) -> dict[str, Any] | None:
    if route.body == Body.RAW:
        return {
            "required": True,
            "description": "the file's new content, as raw bytes (streamed)",
            "content": {"application/octet-stream": {"schema": {}}},
        }
    if route.body == Body.FIELD:
        assert route.body_field is not None
        return {
            "required": True,
            "content": {"application/json": {"schema": _field_schema(route, route.body_field)}},
        }
    if route.body != Body.JSON:
        return None
    by_model, _ = _schemas()
    schema = copy.deepcopy(by_model[ENDPOINTS[route.operation].request])
    for name in route.path_fields:
        schema.get("properties", {}).pop(name, None)
        if name in schema.get("required", []):
            schema["required"].remove(name)
    schema.pop("description", None)
    return {
        "required": bool(schema.get("required")),
        "content": {"application/json": {"schema": schema}},
    }


def _success(route: Route) -> dict[str, Any]:
    result = _ref(ENDPOINTS[route.operation].result)
    json_body = {"application/json": {"schema": result}}
    if route.style == Style.REMOVED:
        return {
            "204": {"description": _STATUS_TEXT[204]},
            "200": {"description": "with Prefer: return=representation", "content": json_body},
        }
    if route.style == Style.CREATED:
        return {"201": {"description": _STATUS_TEXT[201], "content": json_body}}
    if route.style == Style.EXECUTION:
        return {
            "201": {"description": "the command ended; Location names it", "content": json_body},
            "202": {"description": _STATUS_TEXT[202], "content": json_body},
        }
    if route.style == Style.FILE_READ:
        return {
            "200": {
                "description": "the file's bytes (ETag: its sha256), or read_file's JSON "
                "with Accept: application/json",
                "content": {"application/octet-stream": {"schema": {}}, **json_body},
            },
            "206": {
                "description": "the asked range, with Content-Range",
                "content": {"application/octet-stream": {"schema": {}}},
            },
            "304": {"description": "If-None-Match holds: the file still has that sha256"},
            "416": {"description": "the range is outside the file (Content-Range: bytes */SIZE)"},
        }
    if route.style == Style.FILE_WRITE:
        return {
            "200": {"description": "replaced; ETag is the new sha256", "content": json_body},
            "201": {"description": "created; Location names it", "content": json_body},
        }
    if route.style == Style.OUTPUT:
        return {
            "200": {
                "description": "the output after since, or with Accept: application/x-ndjson "
                "one CommandOutput per line until finished",
                "content": {**json_body, "application/x-ndjson": {"schema": result}},
            }
        }
    return {"200": {"description": _STATUS_TEXT[200], "content": json_body}}


def _operation(route: Route, suffix: str) -> dict[str, Any]:
    request = ENDPOINTS[route.operation].request
    doc = inspect.cleandoc(request.__doc__ or route.operation.value)
    operation: dict[str, Any] = {
        "operationId": route.operation.value + suffix,
        "summary": doc.splitlines()[0],
        "description": doc + f"\n\nThe MCP tool `{route.operation.value}`, over HTTP.",
        "tags": [route.path.split("/")[1]],
        "parameters": _parameters(route),
        "responses": {
            **_success(route),
            "default": {
                "description": "a problem: what happened and what to do next",
                "content": {PROBLEM_JSON: {"schema": {"$ref": REF.format(model="Problem")}}},
            },
        },
    }
    body = _request_body(route)
    if body is not None:
        operation["requestBody"] = body
    return operation


def _extra_paths() -> dict[str, Any]:
    ticket = {
        "type": "object",
        "properties": {
            "ticket": {"type": "string"},
            "expires_in_s": {"type": "number"},
            "project_id": {"type": ["string", "null"]},
        },
    }
    return {
        "/api/v1/ws-tickets": {
            "post": {
                "operationId": "create_ws_ticket",
                "summary": "A short-lived, single-use ticket to open a project's WebSocket",
                "description": "For clients that cannot set the Sec-WebSocket-Protocol "
                "header to carry the bearer token: offer the subprotocols 'projectvm.v1' and "
                "'ticket.<ticket>' instead.",
                "tags": ["websocket"],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"project_id": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "201": {
                        "description": "the ticket",
                        "content": {"application/json": {"schema": ticket}},
                    }
                },
            }
        },
    }


@cache
def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for route in ROUTES:
        count = seen.get(route.operation.value, 0)
        seen[route.operation.value] = count + 1
        suffix = "" if count == 0 else f"_{count + 1}"
        template = route.url.replace("{path:path}", "{path}")
        paths.setdefault(template, {})[route.method.lower()] = _operation(route, suffix)
    paths.update(_extra_paths())
    _, definitions = _schemas()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ProjectVM",
            "version": __version__,
            "description": "Shared, isolated, persistent VM workspaces for teams of agents. "
            "Every MCP tool of ProjectVM has a route here, with the same access rules. "
            "Authenticate with the agent's token: Authorization: Bearer <token>. Each "
            "project's events, command output and stdin are also on a WebSocket at "
            "/api/v1/projects/{project_id}/ws (see the docs page).",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": {**definitions, "Problem": PROBLEM_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
