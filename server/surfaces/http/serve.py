"""Serving the HTTP app with uvicorn on a socket bound before serving starts, every connection
watched by a ``ConnectionGuard`` (deadlines for slow and idle clients, a cap on connections)."""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Callable, Sequence

import anyio
import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from server.domain.config import Limits
from server.surfaces.http.app import MCP_PATH, build_http_app
from server.surfaces.http.auth import CredentialSource
from server.surfaces.http.connections import ConnectionGuard, ConnectionLimits
from server.surfaces.mcp.server import ServerHandle

__all__ = ["connection_limits", "raise_open_file_limit", "serve_http"]

log = logging.getLogger("projectvm.http")

# The soft open-file limit asked for when the hard one is unlimited.
UNLIMITED_OPEN_FILES = 1 << 20

# The kernel's queue of connections not accepted yet: long, so a burst of clients waits in it
# rather than being refused.
LISTEN_QUEUE = 2048


class _ListeningSocket(socket.socket):
    """A listening socket whose kernel queue stays long. asyncio calls listen() with uvicorn's
    "backlog", which is also how many connections it accepts in one go; that is kept short
    (``ConnectionLimits.accept_batch``) and must not shorten the queue."""

    def listen(self, backlog: int = LISTEN_QUEUE) -> None:
        super().listen(max(backlog, LISTEN_QUEUE))


def raise_open_file_limit() -> int | None:
    """Raise this process's soft limit on open files to its hard limit (every connection is a
    descriptor); the soft limit now in force, or None where there is none to raise."""
    try:
        import resource
    except ImportError:  # not on this platform (Windows)
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit still has the kernel's ceiling (fs.nr_open, 2**20 by default).
    target = UNLIMITED_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:
            log.warning(
                "cannot raise the open-file limit from %d to %d (%s): fewer HTTP connections "
                "fit; raise it before starting the server (ulimit -n)",
                soft,
                target,
                err,
            )
    return None if soft == resource.RLIM_INFINITY else soft


def connection_limits(limits: Limits, open_files: int | None) -> ConnectionLimits:
    """The guard's limits; connections may use at most half the open-file limit, the rest is
    for the store, the VM channels and the drivers."""
    most = limits.http_max_connections
    if open_files is not None and most > open_files // 2:
        log.warning(
            "http_max_connections is %d but the open-file limit is only %d: allowing %d HTTP "
            "connections; raise the hard limit (ulimit -Hn) to allow more",
            most,
            open_files,
            max(1, open_files // 2),
        )
        most = max(1, open_files // 2)
    return ConnectionLimits(
        header_timeout_s=limits.http_request_header_timeout_s,
        body_timeout_s=limits.http_request_body_timeout_s,
        min_body_bytes_per_s=limits.http_min_body_bytes_per_s,
        keep_alive_timeout_s=limits.http_keep_alive_timeout_s,
        max_connections=most,
        # A client that does not read what it is sent gets as long as a slow body.
        send_timeout_s=limits.http_request_body_timeout_s,
        # A new connection's first bytes are read a few loop turns after it is accepted, and
        # each turn may accept this many more, each closing the longest waiting one: at an
        # eighth of the cap, a newcomer is read before it could be the longest waiting.
        accept_batch=max(1, min(64, most // 8)),
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections only
    # then. Without it a small answer written in two parts (headers, body) waits for the
    # client's delayed ACK: some 40 ms on every request of a kept-alive connection.
    sock = _ListeningSocket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port}: {err.strerror}; pick another --port"
        ) from err
    sock.listen()
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
    limits = handle.config.limits
    guard = ConnectionGuard(connection_limits(limits, raise_open_file_limit()))
    app = guard.watch(
        build_http_app(
            handle,
            host,
            allowed_hosts,
            credential_sources=credential_sources,
            max_connections=guard.limits.max_connections,
        )
    )
    sock = _bind(host, port)
    config = uvicorn.Config(
        app,
        http=guard.protocol_class(AutoHTTPProtocol),
        # wsproto is a dependency; the websockets package, if installed, is not needed.
        ws="wsproto",
        timeout_keep_alive=math.ceil(limits.http_keep_alive_timeout_s),
        backlog=guard.limits.accept_batch,
        log_level="warning",
        lifespan="on",
    )
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
            group.start_soon(guard.sweep_forever)
            if stop is not None:
                group.start_soon(stop_when_told)
            await server.serve(sockets=[sock])
            group.cancel_scope.cancel()
