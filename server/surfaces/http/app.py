"""The HTTP app: MCP at ``/mcp``, the REST API and WebSockets at ``/api/v1`` and the
dashboard at ``/`` (``/ui/...``), one port.

MCP and the API sit behind the same per-agent bearer tokens (``Authenticate``) and the same
Host/Origin policy; the dashboard's session cookie is one more credential source for them.
The dashboard's own paths (the page, its files, signing in) need no credential. The MCP app
owns the server's lifespan (the service); the REST app reaches the service through it.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from server.core.service import ProjectService
from server.surfaces.http.agent_slots import AgentSlots, LimitPerAgent, share_of
from server.surfaces.http.auth import (
    Authenticate,
    Authenticator,
    BearerTokens,
    CredentialSource,
    send_json,
)
from server.surfaces.http.dashboard.app import Dashboard, is_dashboard_path
from server.surfaces.http.dashboard.sessions import SessionBook, SessionCookies
from server.surfaces.http.hosts import HostPolicy
from server.surfaces.http.request_ids import UniqueRequestIds
from server.surfaces.http.rest.app import PUBLIC_PATHS, build_rest_app
from server.surfaces.http.rest.routes import API_PREFIX
from server.surfaces.mcp.server import ServerHandle

__all__ = ["API_PREFIX", "HEALTH_PATH", "MCP_PATH", "build_http_app"]

MCP_PATH = "/mcp"
HEALTH_PATH = "/healthz"


def build_http_app(
    handle: ServerHandle,
    host: str,
    allowed_hosts: list[str] | None = None,
    *,
    credential_sources: Sequence[CredentialSource] = (),
    sessions: SessionBook | None = None,
    max_connections: int | None = None,
) -> ASGIApp:
    """``credential_sources``: more ways to authenticate after the bearer token and the
    dashboard's session cookie; ``sessions``: the dashboard's session table (a new one by
    default). ``max_connections``: the connections the server keeps (by default the
    configured ``http_max_connections``); each agent may use a share of them."""
    hosts = HostPolicy.for_bind(host, allowed_hosts)
    # A write_file call carries its content base64- or JSON-encoded: leave room for that.
    largest_file = handle.config.limits.max_file_bytes
    largest_body = largest_file * 4 // 3 + 1024 * 1024
    mcp_app = handle.mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        transport_security=hosts.mcp_settings(),
        max_request_body_size=largest_body,
    )

    async def resolve(token: str) -> str | None:
        if handle.state is None or not token:
            return None
        return await handle.state.service.agents.resolve(token)

    async def resolve_hash(token_hash: str) -> str | None:
        if handle.state is None:
            return None
        return await handle.state.service.agents.resolve_hash(token_hash)

    def service() -> ProjectService | None:
        return handle.state.service if handle.state is not None else None

    bearer = BearerTokens(resolve)
    cookies = SessionCookies(sessions or SessionBook(), resolve_hash)
    authenticator = Authenticator(bearer, [cookies, *credential_sources])
    dashboard = Dashboard(cookies, bearer, hosts)
    share = share_of(max_connections or handle.config.limits.http_max_connections)
    slots = AgentSlots(share, largest_body)
    rest_app = build_rest_app(service, authenticator, hosts, slots=slots)
    # A JSON-RPC id already in flight in the session is refused before the SDK sees it.
    mcp_guarded = UniqueRequestIds(mcp_app, MCP_PATH, largest_body)

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path == HEALTH_PATH:
            await send_json(send, 200, b'{"status":"ok"}', [])
        elif scope["type"] in ("http", "websocket") and path.startswith(API_PREFIX + "/"):
            await rest_app(scope, receive, send)
        else:
            await mcp_guarded(scope, receive, send)

    authenticated = Authenticate(
        LimitPerAgent(dispatch, slots), authenticator, public_paths={HEALTH_PATH, *PUBLIC_PATHS}
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_dashboard_path(scope.get("path", "")):
            await dashboard(scope, receive, send)
        else:
            await authenticated(scope, receive, send)

    return app
