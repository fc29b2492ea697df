"""Streamable HTTP: the MCP endpoint behind per-agent bearer tokens, Host/Origin checks on.

``/mcp`` needs ``Authorization: Bearer <token>``; a missing or unknown token is a 401 before
any MCP processing. ``/healthz`` answers without a token (it reveals nothing but liveness).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from server.app import ServerHandle
from server.auth import resolve_token
from server.state import AGENT_STATE_KEY

__all__ = ["BearerAuth", "build_http_app", "serve_http"]

log = logging.getLogger("projectvm.http")

MCP_PATH = "/mcp"
SEEN_EVERY_S = 60.0


def _security(host: str, port: int, extra_hosts: list[str]) -> TransportSecuritySettings:
    """Accept only our own Host names: blocks DNS-rebinding from web pages."""
    hosts = {"127.0.0.1", "localhost", "[::1]", host if ":" not in host else f"[{host}]"}
    hosts.update(extra_hosts)
    allowed = sorted(f"{h}:*" if ":" not in h.rsplit("]", 1)[-1] else h for h in hosts)
    allowed += sorted(hosts)  # some clients omit the port
    origins = [f"http://{h}" for h in allowed] + [f"https://{h}" for h in allowed]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=allowed, allowed_origins=origins
    )


async def _send_json(
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
            await _send_json(send, 200, b'{"status":"ok"}', [])
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = authorization.partition(" ")
        agent = await self.resolve(token.strip()) if scheme.lower() == "bearer" else None
        if agent is None:
            message = (
                b'{"error":"unauthorized","message":"send Authorization: Bearer <token>; '
                b'create a token with: projectvm agents add NAME"}'
            )
            await _send_json(
                send, 401, message, [(b"www-authenticate", b'Bearer realm="projectvm"')]
            )
            return
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        state[AGENT_STATE_KEY] = agent
        await self.app(scope, receive, send)


def build_http_app(
    handle: ServerHandle, host: str, port: int, allowed_hosts: list[str] | None = None
) -> ASGIApp:
    # A write_file call carries its content base64- or JSON-encoded: leave room for that.
    largest_file = handle.config.limits.max_file_bytes
    mcp_app = handle.mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        transport_security=_security(host, port, allowed_hosts or []),
        max_request_body_size=largest_file * 4 // 3 + 1024 * 1024,
    )

    last_seen: dict[str, float] = {}

    async def resolve(token: str) -> str | None:
        if handle.state is None or not token:
            return None
        store = handle.state.service.store
        agent = await resolve_token(store, token)
        if (
            agent is not None
            and time.monotonic() - last_seen.get(agent, -SEEN_EVERY_S) >= SEEN_EVERY_S
        ):
            last_seen[agent] = time.monotonic()
            await store.touch_agent(agent)  # "last seen", at most once a minute per agent
        return agent

    return BearerAuth(mcp_app, resolve)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port}: {err.strerror}; pick another --port"
        ) from err
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve_http(
    handle: ServerHandle,
    host: str,
    port: int,
    *,
    allowed_hosts: list[str] | None = None,
    on_ready: Callable[[str], None] | None = None,
    stop: anyio.Event | None = None,
) -> None:
    """Serve until interrupted or ``stop`` is set; ``on_ready`` gets the MCP URL.

    The socket is bound before serving starts, so the URL is known (and connectable) at once,
    even with ``port=0``. Setting ``stop`` shuts down gracefully: open sessions end and the
    server's lifespan (the store, the VM channels) closes before this returns.
    """
    app = build_http_app(handle, host, port, allowed_hosts)
    sock = _bind(host, port)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    bound_port = sock.getsockname()[1]
    display = f"[{host}]" if ":" in host else host
    if on_ready is not None:
        on_ready(f"http://{display}:{bound_port}{MCP_PATH}")

    async def stop_when_told() -> None:
        assert stop is not None
        await stop.wait()
        server.should_exit = True

    with sock:
        async with anyio.create_task_group() as group:
            if stop is not None:
                group.start_soon(stop_when_told)
            await server.serve(sockets=[sock])
            group.cancel_scope.cancel()
