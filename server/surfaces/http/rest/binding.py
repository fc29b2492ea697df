"""From an HTTP request to an operation's request model.

The fields come from the path, the query string, a JSON body and, for writes, the
conditional headers (``If-Match``, ``If-None-Match: *``). A field given twice, a parameter
the operation does not take, or a value of the wrong type is refused with a 422 problem that
names it; the request model itself is the one the MCP tool validates with.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from server.core.requests import Request as OperationRequest
from server.core.service import ENDPOINTS
from server.domain.invalid import describe, problems
from server.surfaces.http.problems import Problem
from server.surfaces.http.rest.routes import Body, Route

__all__ = ["MAX_JSON_BODY", "bind", "entity_tag", "invalid", "read_json"]

# JSON bodies (not file uploads, which stream) are read whole: bounded.
MAX_JSON_BODY = 8 * 1024 * 1024


def invalid(detail: str, **extensions: Any) -> Problem:
    return Problem(422, "invalid-input", "Invalid input", detail, **extensions)


def entity_tag(value: str) -> str:
    """An ``If-Match`` value as a sha256: quotes and a weak prefix are not part of it."""
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


async def read_json(request: Request) -> Any:
    """The body as JSON; empty is ``None``."""
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_JSON_BODY:
        raise Problem(
            413, "content-too-large", "Content too large",
            f"the JSON body is {size} bytes; at most {MAX_JSON_BODY} are accepted here "
            "(upload files with PUT .../files/{path}, which streams)",
        )  # fmt: skip
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise Problem(
                413, "content-too-large", "Content too large",
                f"the JSON body is over {MAX_JSON_BODY} bytes; send less",
            )  # fmt: skip
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except RecursionError:
        raise Problem(
            400, "malformed-json", "Malformed JSON",
            "the request body nests arrays or objects too deeply to read; send a flat JSON "
            "object of the operation's fields",
        ) from None  # fmt: skip
    except ValueError as err:  # invalid JSON or UTF-8, a number too long to convert
        raise Problem(
            400, "malformed-json", "Malformed JSON",
            f"the request body is not valid JSON ({err}); send a JSON object with "
            "Content-Type: application/json",
        ) from None  # fmt: skip


def _conditional_fields(request: Request, route: Route) -> dict[str, Any]:
    fields = ENDPOINTS[route.operation].request.model_fields
    found: dict[str, Any] = {}
    if_match = request.headers.get("if-match")
    if_none_match = request.headers.get("if-none-match")
    if "if_match" in fields and if_match is not None:
        tags = [entity_tag(tag) for tag in if_match.split(",")]
        if len(tags) != 1 or tags[0] == "*":
            raise invalid("If-Match takes exactly one sha256 (the ETag of the version you read)")
        found["if_match"] = tags[0]
    if "if_match" in fields and if_none_match is not None and route.method != "GET":
        if if_none_match.strip() != "*":
            raise invalid("on a write, If-None-Match only takes '*' (create, never replace)")
        if "if_match" in found:
            raise invalid("send If-Match or If-None-Match: *, not both")
        found["if_match"] = "absent"
    return found


def _merge(target: dict[str, Any], source: dict[str, Any], where: str) -> None:
    for name, value in source.items():
        if name in target:
            raise invalid(f"{name} is given twice (again in the {where}); give it once")
        target[name] = value


async def bind(
    request: Request, route: Route, *, extra: dict[str, Any] | None = None
) -> OperationRequest:
    """The operation's request model, from everything the HTTP request carries."""
    fields: dict[str, Any] = dict(request.path_params)
    query: dict[str, Any] = {}
    for name, value in request.query_params.multi_items():
        if name in query:
            raise invalid(f"the query parameter {name} is given more than once")
        query[name] = value
    _merge(fields, query, "query string")
    if route.body in (Body.JSON, Body.FIELD):
        body = await read_json(request)
        if route.body == Body.FIELD:
            assert route.body_field is not None
            _merge(fields, {route.body_field: body if body is not None else {}}, "body")
        elif body is not None:
            if not isinstance(body, dict):
                raise invalid("the request body must be a JSON object of the operation's fields")
            _merge(fields, body, "body")
    _merge(fields, _conditional_fields(request, route), "conditional headers")
    for name in extra or {}:
        if name in fields:
            raise invalid(f"{name} is not a parameter of {route.method} {route.url}; drop it")
    fields.update(extra or {})
    model = ENDPOINTS[route.operation].request
    try:
        return model.model_validate(fields)
    except ValidationError as err:
        raise invalid(
            f"invalid request for {route.operation}: {describe(err, whole='body')}; fix them "
            "and send it again (/api/v1/docs lists every operation's parameters)",
            errors=problems(err),
        ) from None
