"""Request bodies sent in part and then left there cannot park server memory (round three).

An MCP call's body is read whole before it is parsed. The body deadline was measured since the
request began (``http_request_body_timeout_s`` plus a second per ``http_min_body_bytes_per_s``
bytes), so a body sent fast bought time for silence: on main, ten 40 MB bodies sent but for
their last byte held 390 MB for 41 minutes, and an agent's share of the connections would hold
5 GB. Now a body that stops arriving is closed a body timeout later, and an agent may be
sending only a few of the largest bodies at once. Runs on the ``process`` driver.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from server.domain.config import Limits
from server.surfaces.http.agent_slots import BODIES_PER_AGENT
from tests.security.http_attacks import LiveServer, live_server
from tests.security.stalled_readers import held_by_server, server_rss_mib

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024
MAX_FILE = 8 * MIB  # so the largest MCP body is some 12 MB
BODY = 10 * MIB
PARKED = 10
MARGIN_S = 5.0


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[LiveServer]:
    config = f"[limits]\nmax_file_bytes = {MAX_FILE}\n"
    async with live_server(data_dir, ("mallory",), config=config) as live:
        yield live


def park(host: str, port: int, token: str) -> socket.socket:
    """An MCP POST whose body is sent as far as the server takes it, never the last byte."""
    sock = socket.create_connection((host, port))
    sock.sendall(
        (
            f"POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            f"Content-Length: {BODY}\r\n\r\n"
        ).encode()
    )
    sock.setblocking(False)
    body = memoryview(b" " * (BODY - 1))
    try:
        while body:
            body = body[sock.send(body) :]
    except BlockingIOError:
        pass  # the server reads no more of it (refused), or not yet
    return sock


def answered_status(sock: socket.socket) -> int | None:
    try:
        head = sock.recv(64)
    except BlockingIOError:
        return None
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1") else None


async def test_bodies_left_half_sent_are_few_per_agent_and_closed_a_body_timeout_later(
    server: LiveServer,
) -> None:
    parts = urlsplit(server.base)
    host, port = str(parts.hostname), int(parts.port or 80)
    baseline = server_rss_mib(server.pid)
    with ExitStack() as stack:
        sockets = []
        for _ in range(PARKED):
            sockets.append(park(host, port, server.tokens["mallory"]))
            stack.callback(sockets[-1].close)
        peak = baseline
        started = anyio.current_time()
        async with httpx.AsyncClient(base_url=server.base) as client:
            with anyio.fail_after(Limits().http_request_body_timeout_s + MARGIN_S):
                while any(held_by_server(s) for s in sockets):
                    await client.get("/healthz")
                    peak = max(peak, server_rss_mib(server.pid))
        elapsed = anyio.current_time() - started
        refused = [answered_status(s) for s in sockets].count(429)
    grown = peak - baseline
    print(
        f"{PARKED} parked {BODY // MIB} MiB bodies: {refused} refused, the server grew "
        f"{grown:.0f} MiB, all closed after {elapsed:.1f} s"
    )
    assert refused == PARKED - BODIES_PER_AGENT
    assert grown < (BODIES_PER_AGENT + 2) * BODY / MIB
