"""Clients that ask for a lot and read none of it cannot hold server memory for long (round
three).

On main, a download nobody read held about 18 MB of the server for as long as its client kept
the socket (40 of them: 730 MB), and a WebSocket that read nothing after subscribing to a big
output about 80 MB (uvicorn's keepalive ping closes such a socket politely, which waits for
the unread data forever). Now what waits for one client is bounded, and a client that reads
nothing for ``http_request_body_timeout_s`` (HTTP) or ``SEND_STALL_S`` (WebSocket) is
disconnected. Runs on the ``process`` driver: it happens in the HTTP server.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from server.domain.config import Limits
from server.surfaces.http.ws.session import SEND_STALL_S
from tests.security.http_attacks import LiveServer, live_server
from tests.security.stalled_readers import (
    held_by_server,
    raw_request,
    raw_websocket,
    server_rss_mib,
)

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024
# The guard sweeps once a second; give the close that much and a little more.
MARGIN_S = 5.0


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[LiveServer]:
    async with live_server(data_dir, ("mallory",)) as live:
        yield live


async def test_downloads_nobody_reads_are_closed_and_hold_little_meanwhile(
    server: LiveServer,
) -> None:
    async with server.rest("mallory") as mallory:
        project_id = (await mallory.post("/projects", json={"name": "hoard"})).json()["project_id"]
        big = await mallory.put(f"/projects/{project_id}/files/big.bin", content=b"x" * 30 * MIB)
        assert big.status_code == 201, big.text
        # Once read whole first, so that every path is warm before measuring.
        assert len((await mallory.get(f"/projects/{project_id}/files/big.bin")).content) == (
            30 * MIB
        )
    parts = urlsplit(server.base)
    host, port = str(parts.hostname), int(parts.port or 80)
    request = (
        f"GET /api/v1/projects/{project_id}/files/big.bin HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {server.tokens['mallory']}\r\n\r\n"
    ).encode()
    baseline = server_rss_mib(server.pid)
    with ExitStack() as stack:
        sockets = [stack.enter_context(raw_request(host, port, request)) for _ in range(10)]
        peak = baseline
        deadline = Limits().http_request_body_timeout_s + MARGIN_S
        started = anyio.current_time()
        async with httpx.AsyncClient(base_url=server.base) as client:
            with anyio.fail_after(deadline):
                while any(held_by_server(s) for s in sockets):
                    await client.get("/healthz")
                    peak = max(peak, server_rss_mib(server.pid))
        elapsed = anyio.current_time() - started
    grown = peak - baseline
    print(f"10 unread downloads: server grew {grown:.0f} MiB, all closed after {elapsed:.1f} s")
    assert grown < 80, f"10 unread downloads held {grown:.0f} MiB of the server"


async def test_a_websocket_that_reads_nothing_is_closed_and_holds_little_meanwhile(
    server: LiveServer,
) -> None:
    async with server.rest("mallory") as mallory:
        project_id = (await mallory.post("/projects", json={"name": "hoard"})).json()["project_id"]
        run = await mallory.post(
            f"/projects/{project_id}/executions",
            json={"command": "head -c 3000000 /dev/zero | tr '\\0' x", "wait_s": 60},
        )
        execution_id = run.json()["execution_id"]
        assert len(run.json()["stdout"]) > MIB
    parts = urlsplit(server.base)
    host, port = str(parts.hostname), int(parts.port or 80)
    path = f"/api/v1/projects/{project_id}/ws"
    protocols = ["projectvm.v1", f"bearer.{server.tokens['mallory']}"]
    subscribe = {"stream": "execution", "type": "subscribe", "execution_id": execution_id}
    baseline = server_rss_mib(server.pid)
    with ExitStack() as stack:
        sockets = [
            stack.enter_context(raw_websocket(host, port, path, protocols, [subscribe] * 300))
            for _ in range(3)
        ]
        peak = baseline
        started = anyio.current_time()
        async with httpx.AsyncClient(base_url=server.base) as client:
            with anyio.fail_after(SEND_STALL_S + MARGIN_S):
                while any(held_by_server(s) for s in sockets):
                    await client.get("/healthz")
                    peak = max(peak, server_rss_mib(server.pid))
        elapsed = anyio.current_time() - started
    grown = peak - baseline
    print(f"3 unread WebSockets: server grew {grown:.0f} MiB, all closed after {elapsed:.1f} s")
    assert grown < 60, f"3 unread WebSockets held {grown:.0f} MiB of the server"


async def test_a_message_type_a_stream_does_not_take_is_answered_and_the_socket_serves_on(
    server: LiveServer,
) -> None:
    async with server.rest("mallory") as mallory:
        project_id = (await mallory.post("/projects", json={"name": "typo"})).json()["project_id"]
    protocols = [Subprotocol("projectvm.v1"), Subprotocol(f"bearer.{server.tokens['mallory']}")]
    async with connect(server.ws_url(project_id), subprotocols=protocols) as ws:
        await ws.recv()  # hello
        await ws.send(json.dumps({"stream": "execution", "type": "bogus", "id": 7}))
        with anyio.fail_after(10):
            refusal = json.loads(await ws.recv())
        assert refusal["type"] == "error", refusal
        assert refusal["id"] == 7, refusal
        assert "unknown execution message type" in refusal["problem"]["detail"]
        await ws.send(json.dumps({"stream": "session", "type": "ping", "id": 8}))
        with anyio.fail_after(10):
            assert json.loads(await ws.recv()) == {"stream": "session", "type": "pong", "id": 8}
