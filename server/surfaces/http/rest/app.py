"""``/api/v1`` as an ASGI app: the route table, the docs, WebSocket tickets and sockets.

Each path of the route table is one Starlette route that picks the operation by method (so a
wrong method is a 405 problem naming the right ones). Requests reach this app authenticated
(``Authenticate`` runs first); here the Host is checked, and for changes from a browser the
Origin, so no other site's page can drive the API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route, Router, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from server.domain.operations import Operation
from server.surfaces.http.agent_slots import AgentSlots, share_of
from server.surfaces.http.auth import SAFE_METHODS, Authenticator, identity_of
from server.surfaces.http.hosts import HostPolicy
from server.surfaces.http.problems import Problem, problem_response
from server.surfaces.http.rest.api import RestApi, json_response
from server.surfaces.http.rest.binding import read_json
from server.surfaces.http.rest.docs import docs_page
from server.surfaces.http.rest.handlers import HANDLERS
from server.surfaces.http.rest.openapi import openapi_document
from server.surfaces.http.rest.routes import API_PREFIX, ROUTES
from server.surfaces.http.rest.routes import Route as ApiRoute
from server.surfaces.http.service_source import ServiceSource
from server.surfaces.http.ws.endpoint import ProjectSocket
from server.surfaces.http.ws.tickets import TicketBook

__all__ = ["PUBLIC_PATHS", "build_rest_app"]

OPENAPI_PATH = API_PREFIX + "/openapi.json"
DOCS_PATH = API_PREFIX + "/docs"
PUBLIC_PATHS = frozenset({OPENAPI_PATH, DOCS_PATH})
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _path_endpoint(
    api: RestApi, by_method: dict[str, ApiRoute]
) -> Callable[[Request], Awaitable[Response]]:
    allowed = ", ".join(sorted(by_method))

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        route = by_method.get(method)
        if route is None:
            problem = Problem(
                405, "method-not-allowed", "Method not allowed",
                f"{request.url.path} takes {allowed}, not {request.method}; see /api/v1/docs",
            )  # fmt: skip
            return problem_response(problem, request.url.path, {"Allow": allowed})
        handler = HANDLERS[route.style]
        return await api.guarded(request, route.operation, lambda: handler(api, route, request))

    return endpoint


def _ticket_endpoint(api: RestApi, tickets: TicketBook) -> Callable[[Request], Awaitable[Response]]:
    async def issue(request: Request) -> Response:
        async def handle() -> Response:
            if request.method != "POST":
                raise Problem(
                    405, "method-not-allowed", "Method not allowed", "POST a ticket request"
                )
            body = await read_json(request) or {}
            project_id = body.get("project_id") if isinstance(body, dict) else None
            if project_id is not None and not isinstance(project_id, str):
                raise Problem(422, "invalid-input", "Invalid input", "project_id is a string")
            caller = api.caller(request, Operation.GET_EVENTS)
            if project_id is not None:  # no ticket to a project the agent may not read
                await api.service.gate.admit(caller, project_id)
            identity = identity_of(request.scope)
            assert identity is not None  # the caller was made from it
            ticket = tickets.issue(identity, project_id)
            result = {"ticket": ticket, "expires_in_s": tickets.ttl_s, "project_id": project_id}
            return json_response(result, 201)

        return await api.guarded(request, Operation.GET_EVENTS, handle)

    return issue


class _HostGuard:
    """The Host must be ours; a change sent by a browser must come from our own pages."""

    def __init__(self, app: ASGIApp, hosts: HostPolicy) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            problem = None
            if not self.hosts.allows_host(request.headers.get("host")):
                problem = Problem(
                    421, "misdirected-request", "Misdirected request",
                    f"this server does not answer to the host {request.headers.get('host')!r}; "
                    "use one of its own names (or start it with --allowed-host)",
                )  # fmt: skip
            elif request.method not in SAFE_METHODS and not self.hosts.allows_origin(
                request.headers.get("origin")
            ):
                problem = Problem(
                    403, "foreign-origin", "Foreign origin",
                    f"a page of {request.headers.get('origin')} may not change anything here",
                )  # fmt: skip
            if problem is not None:
                await problem_response(problem, request.url.path)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _no_such_route(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": "no such WebSocket"})
        return
    problem = Problem(
        404, "no-such-route", "No such route",
        f"nothing is at {scope['path']}; /api/v1/docs lists the routes",
    )  # fmt: skip
    await problem_response(problem, scope["path"])(scope, receive, send)


def build_rest_app(
    service_source: ServiceSource,
    authenticator: Authenticator,
    hosts: HostPolicy,
    tickets: TicketBook | None = None,
    *,
    slots: AgentSlots | None = None,
) -> ASGIApp:
    """``slots``: how many requests and WebSockets each agent has open (one share each)."""
    api = RestApi(service_source)
    tickets = tickets or TicketBook()
    slots = slots or AgentSlots(share_of(1024))
    by_path: dict[str, dict[str, ApiRoute]] = {}
    for route in ROUTES:
        by_path.setdefault(route.url, {})[route.method] = route
    routes: list[BaseRoute] = [
        Route(OPENAPI_PATH, lambda _: JSONResponse(openapi_document()), methods=["GET"]),
        Route(DOCS_PATH, lambda _: HTMLResponse(docs_page()), methods=["GET"]),
        Route(API_PREFIX + "/ws-tickets", _ticket_endpoint(api, tickets), methods=ALL_METHODS),
        WebSocketRoute(
            API_PREFIX + "/projects/{project_id}/ws",
            ProjectSocket(service_source, authenticator, tickets, hosts, slots).serve,
        ),
    ]
    routes += [
        Route(path, _path_endpoint(api, methods), methods=ALL_METHODS)
        for path, methods in by_path.items()
    ]
    return _HostGuard(Router(routes, default=_no_such_route), hosts)
