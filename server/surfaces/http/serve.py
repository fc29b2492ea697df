"""Serving the HTTP app with uvicorn on a socket bound before serving starts."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

import anyio
import uvicorn

from server.surfaces.http.app import MCP_PATH, build_http_app
from server.surfaces.http.auth import CredentialSource
from server.surfaces.mcp.server import ServerHandle

__all__ = ["serve_http"]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections only
    # then. Without it a small answer written in two parts (headers, body) waits for the
    # client's delayed ACK: some 40 ms on every request of a kept-alive connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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
    credential_sources: Sequence[CredentialSource] = (),
) -> None:
    """Serve until interrupted or ``stop`` is set; ``on_ready`` gets the MCP URL.

    The socket is bound before serving starts, so the URL is known (and connectable) at once,
    even with ``port=0``. Setting ``stop`` shuts down gracefully: open sessions end and the
    server's lifespan (the store, the VM channels) closes before this returns.
    ``credential_sources``: ways to authenticate besides the bearer token (a session cookie).
    """
    app = build_http_app(handle, host, allowed_hosts, credential_sources=credential_sources)
    sock = _bind(host, port)
    # wsproto is a dependency; the websockets package, if installed, is not needed.
    config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="wsproto")
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
