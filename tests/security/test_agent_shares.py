"""One agent's open sockets and streams cannot take the whole server (round three).

The connection guard never closes a connection being served, and turns newcomers away when
every allowed connection is served: on main, one agent holding ``http_max_connections``
WebSockets or long-polls (1,024 took four seconds) locked every other agent out. Each agent now
gets a share. Runs once, on the ``process`` driver: it happens in the HTTP server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from tests.helpers import call
from tests.security.http_attacks import LiveServer, live_server
from tests.servers import http_client

pytestmark = pytest.mark.anyio

CONNECTIONS = 48  # the server's http_max_connections here
SHARE = CONNECTIONS // 8
# As many long-polls as fit beside the sockets and the clients' own connections.
POLLS = CONNECTIONS - SHARE - 2


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[LiveServer]:
    config = f"[limits]\nhttp_max_connections = {CONNECTIONS}\n"
    async with live_server(data_dir, ("alice", "mallory"), config=config) as live:
        yield live


async def open_socket(server: LiveServer, project_id: str) -> ClientConnection | int:
    """A WebSocket as mallory, or the status that refused it."""
    protocols = [Subprotocol("projectvm.v1"), Subprotocol(f"bearer.{server.tokens['mallory']}")]
    try:
        return await connect(server.ws_url(project_id), subprotocols=protocols)
    except InvalidStatus as refused:
        return refused.response.status_code
    except (OSError, EOFError, anyio.EndOfStream):
        return 0  # the connection was closed before any answer


async def test_one_agent_holding_every_connection_it_can_leaves_room_for_everyone_else(
    server: LiveServer,
) -> None:
    async with server.rest("mallory") as mallory, AsyncExitStack() as held:
        project_id = (await mallory.post("/projects", json={"name": "hog"})).json()["project_id"]
        # Every connection the server keeps, as WebSockets...
        outcomes = [await open_socket(server, project_id) for _ in range(CONNECTIONS)]
        sockets = [o for o in outcomes if not isinstance(o, int)]
        for ws in sockets:
            held.push_async_callback(ws.close)
        refusals = [o for o in outcomes if isinstance(o, int)]
        # ... and as long-polls of the event feed.
        polls = httpx.AsyncClient(
            base_url=server.api,
            headers={"Authorization": f"Bearer {server.tokens['mallory']}"},
            timeout=120,
            limits=httpx.Limits(max_connections=CONNECTIONS),
        )
        held.push_async_callback(polls.aclose)
        group = await held.enter_async_context(anyio.create_task_group())
        held.callback(group.cancel_scope.cancel)
        statuses: list[int] = []

        async def long_poll() -> None:
            try:
                response = await polls.get(
                    f"/projects/{project_id}/events", params={"since_id": 10**9, "wait_s": 60}
                )
                statuses.append(response.status_code)
            except httpx.TransportError:
                statuses.append(0)

        for _ in range(POLLS):
            group.start_soon(long_poll)
        with anyio.fail_after(30):
            while len(statuses) < POLLS - max(0, SHARE - len(sockets)):
                await anyio.lowlevel.checkpoint()  # the refusals come back at once
        # alice, another agent, still gets in at once, over REST and over MCP.
        started = anyio.current_time()
        try:
            with anyio.fail_after(2):
                async with server.rest("alice") as alice:
                    me = await alice.get("/me")
                async with http_client(server.mcp, server.tokens["alice"]) as client:
                    projects = await call(client, "list_projects")
        except (TimeoutError, httpx.TransportError) as err:
            raise AssertionError(
                f"alice could not get in while mallory held {len(sockets)} WebSockets and "
                f"{POLLS - len(statuses)} long-polls: {err!r}"
            ) from None
        print(
            f"mallory holds {len(sockets)} sockets and {POLLS - len(statuses)} polls; "
            f"alice answered in {anyio.current_time() - started:.2f} s"
        )
        assert me.status_code == 200
        assert projects["projects"] == []
        # mallory got her share, and was told why she got no more.
        assert len(sockets) == SHARE
        assert set(refusals) == {429}
        assert set(statuses) == {429}
        refused = await mallory.get("/me")
        assert refused.status_code == 429
        assert "requests or WebSockets in progress" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "1"


async def test_refused_websocket_handshakes_do_not_count_as_connections_being_served(
    server: LiveServer,
) -> None:
    """A refused handshake (here without a token: anyone can send one) used to count as a
    connection being served until the guard's next sweep, so a burst of them turned every
    newcomer away."""
    async with server.rest("alice") as alice:
        project_id = (await alice.post("/projects", json={"name": "open"})).json()["project_id"]
    protocols = [Subprotocol("projectvm.v1"), Subprotocol("bearer.not-a-token")]
    for _ in range(CONNECTIONS + 8):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.ws_url(project_id), subprotocols=protocols):
                pass
        assert refused.value.response.status_code == 401
    try:
        async with server.rest("alice") as alice:
            me = await alice.get("/me")
    except httpx.TransportError as err:
        raise AssertionError(f"alice was turned away after refused handshakes: {err!r}") from None
    assert me.status_code == 200
