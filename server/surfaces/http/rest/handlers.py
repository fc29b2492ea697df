"""How each style of route answers: status codes, ``Location``, ``Link`` and idempotent DELETE.

Every handler binds the request model, makes one call through :class:`RestApi` (so the same
policy as MCP decides) and shapes the result; the files and the output stream have their own
modules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from guest_runtime.errors import PathNotFound
from server.core.requests import RemoveAgent
from server.core.results import (
    CommandResult,
    DeleteResult,
    EventsResult,
    ExecutionHistory,
    ProjectInfo,
    TerminalInfo,
)
from server.domain.errors import NotFound
from server.domain.models import ExecutionStatus
from server.surfaces.http.problems import Problem
from server.surfaces.http.rest.api import RestApi, json_response
from server.surfaces.http.rest.binding import bind
from server.surfaces.http.rest.files import read_file, write_file
from server.surfaces.http.rest.output import read_output
from server.surfaces.http.rest.routes import API_PREFIX, Route, Style

__all__ = ["HANDLERS", "Handler"]

Handler = Callable[[RestApi, Route, Request], Awaitable[Response]]


def _wants_representation(request: Request) -> bool:
    """RFC 7240 ``Prefer: return=representation``: answer a DELETE with its result."""
    prefer = request.headers.get("prefer", "")
    return "return=representation" in prefer.replace(" ", "").lower()


def _next_link(request: Request, **replace: str) -> str:
    params = {**dict(request.query_params), **replace}
    return f'<{request.url.path}?{urlencode(params)}>; rel="next"'


async def plain(api: RestApi, route: Route, request: Request) -> Response:
    model = await bind(request, route)
    return json_response(await api.call(request, route.operation, model))


async def created(api: RestApi, route: Route, request: Request) -> Response:
    model = await bind(request, route)
    result = await api.call(request, route.operation, model)
    if isinstance(result, TerminalInfo):
        location = f"{API_PREFIX}/terminals/{result.execution_id}"
    else:
        assert isinstance(result, ProjectInfo)
        location = f"{API_PREFIX}/projects/{result.project_id}"
    return json_response(result, 201, {"Location": location})


async def removed(api: RestApi, route: Route, request: Request) -> Response:
    """204 whether it was removed now or was already gone: DELETE is idempotent.

    "Gone" is only ever about the target: a project the caller cannot see is a 404 on every
    other route; deleting one is answered like deleting a gone one, as MCP answers it
    (``deleted: false``), so a stranger learns nothing and changes nothing.
    """
    model = await bind(request, route)
    try:
        result = await api.call(request, route.operation, model)
    except PathNotFound:
        if getattr(model, "if_match", None) not in (None, "absent"):
            raise Problem(
                412, "stale-write", "Stale write",
                f"{getattr(model, 'path', '')} is gone, so it no longer has the sha256 of "
                "If-Match; nothing was deleted",
                current_sha256=None,
            ) from None  # fmt: skip
        return Response(status_code=204)
    except NotFound:
        if not isinstance(model, RemoveAgent):
            raise
        # Not a member (any more), or no such project for you? Only the first is "gone".
        caller = api.caller(request, route.operation)
        await api.service.gate.admit(caller, model.project_id)
        return Response(status_code=204)
    if isinstance(result, DeleteResult) and not result.deleted:
        return Response(status_code=204)
    if _wants_representation(request):
        return json_response(result, 200, {"Preference-Applied": "return=representation"})
    return Response(status_code=204)


async def execution(api: RestApi, route: Route, request: Request) -> Response:
    """201 with the outcome when the command ended within the wait; 202 while it runs."""
    model = await bind(request, route)
    result = await api.call(request, route.operation, model)
    assert isinstance(result, CommandResult)
    ended = result.status not in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
    location = f"{API_PREFIX}/executions/{result.execution_id}"
    return json_response(result, 201 if ended else 202, {"Location": location})


async def history(api: RestApi, route: Route, request: Request) -> Response:
    model = await bind(request, route)
    result = await api.call(request, route.operation, model)
    assert isinstance(result, ExecutionHistory)
    headers = {}
    if result.has_more and result.next_cursor is not None:
        headers["Link"] = _next_link(request, cursor=result.next_cursor)
    return json_response(result, 200, headers)


async def events(api: RestApi, route: Route, request: Request) -> Response:
    model = await bind(request, route)
    result = await api.call(request, route.operation, model)
    assert isinstance(result, EventsResult)
    headers = {}
    if result.has_more:
        headers["Link"] = _next_link(request, since_id=str(result.last_event_id))
    return json_response(result, 200, headers)


HANDLERS: dict[Style, Handler] = {
    Style.PLAIN: plain,
    Style.CREATED: created,
    Style.REMOVED: removed,
    Style.EXECUTION: execution,
    Style.OUTPUT: read_output,
    Style.HISTORY: history,
    Style.EVENTS: events,
    Style.FILE_READ: read_file,
    Style.FILE_WRITE: write_file,
}
