"""Bearer-token authentication for every HTTP request but ``/healthz``.

A missing or unknown token is a 401 before any further processing; a known one leaves the
agent's id in the request's state, where the surfaces read it, and makes the agent the
request's authenticated user. The MCP SDK binds each session to the user whose request opened
it and answers anyone else's use of its id as it answers an unknown session (404): another
agent's valid token cannot join, listen to, cancel in, or end an agent's session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.types import ASGIApp, Receive, Scope, Send

from server.surfaces.mcp.identity import AGENT_STATE_KEY

__all__ = ["BearerAuth", "send_json"]


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """ASGI middleware: every HTTP request but ``/healthz`` must carry a known agent token."""

    def __init__(self, app: ASGIApp, resolve: Callable[[str], Awaitable[str | None]]) -> None:
        self.app = app
        self.resolve = resolve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/healthz":
            await send_json(send, 200, b'{"status":"ok"}', [])
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        agent = await self.resolve(token) if scheme.lower() == "bearer" else None
        if agent is None:
            message = (
                b'{"error":"unauthorized","message":"send Authorization: Bearer <token>; '
                b'create a token with: projectvm agents add NAME"}'
            )
            await send_json(
                send, 401, message, [(b"www-authenticate", b'Bearer realm="projectvm"')]
            )
            return
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        state[AGENT_STATE_KEY] = agent
        # The agent is the principal (client_id) a session is bound to, whatever token it used.
        scope["user"] = AuthenticatedUser(AccessToken(token=token, client_id=agent, scopes=[]))
        await self.app(scope, receive, send)
