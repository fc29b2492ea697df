"""A replaced token stops working everywhere, also in what it opened (round three).

Replacing an agent's token (``projectvm agents token NAME``, what one does after a leak) only
kept the old token out of new requests: a WebSocket opened with it (or with a ticket asked for
with it) went on running commands and receiving events as the agent, and an output stream went
on streaming. Now a socket asks whether its credential still stands before each message (and
every 30 s while idle) and closes (4401) when it does not; a stream ends with a problem. Runs on
the ``process`` driver.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from server.core.agents import Agents
from server.store import Store
from server.surfaces.http.ws.session import CLOSE_CREDENTIAL_GONE
from tests.security.http_attacks import LiveServer, live_server

pytestmark = pytest.mark.anyio


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[LiveServer]:
    async with live_server(data_dir, ("alice", "bob")) as live:
        yield live


async def replace_token(server: LiveServer, data_dir: Path, agent: str) -> None:
    """What ``projectvm agents token AGENT`` does, while the server runs."""
    async with await Store.open(data_dir / "projectvm.db") as store:
        await Agents(store).issue_token(agent, replace=True)


async def shared_project(server: LiveServer) -> str:
    async with server.rest("alice") as alice:
        created = await alice.post("/projects", json={"name": "leak"})
        project_id = str(created.json()["project_id"])
        await alice.put(f"/projects/{project_id}/members/bob", json={"access_level": "read_write"})
    return project_id


async def received_until_closed(
    ws: ClientConnection, seen: list[dict[str, Any]]
) -> ConnectionClosed:
    """Every message until the server closes the socket; how it closed it."""
    while True:
        try:
            seen.append(json.loads(await ws.recv()))
        except ConnectionClosed as closed:
            return closed


@pytest.mark.parametrize("opened_with", ["bearer", "ticket"])
async def test_a_socket_opened_with_a_replaced_token_runs_nothing_more_and_is_closed(
    server: LiveServer, data_dir: Path, opened_with: str
) -> None:
    project_id = await shared_project(server)
    credential = f"bearer.{server.tokens['bob']}"
    if opened_with == "ticket":
        async with server.rest("bob") as bob:
            issued = await bob.post("/ws-tickets", json={"project_id": project_id})
            credential = f"ticket.{issued.json()['ticket']}"
    protocols = [Subprotocol("projectvm.v1"), Subprotocol(credential)]
    async with connect(server.ws_url(project_id), subprotocols=protocols) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        await replace_token(server, data_dir, "bob")
        run = {"stream": "execution", "type": "run", "command": "echo leaked", "id": 1}
        await ws.send(json.dumps(run))
        seen: list[dict[str, Any]] = []
        with anyio.fail_after(30):
            closed = await received_until_closed(ws, seen)
    assert closed.rcvd is not None
    assert closed.rcvd.code == CLOSE_CREDENTIAL_GONE
    assert [m["type"] for m in seen] == ["error"], seen
    assert "token was replaced" in seen[0]["problem"]["detail"]
    async with server.rest("alice") as alice:
        history = await alice.get(f"/projects/{project_id}/history")
    assert history.json()["executions"] == [], "the old token's command ran"


async def test_an_output_stream_opened_with_a_replaced_token_ends(
    server: LiveServer, data_dir: Path
) -> None:
    project_id = await shared_project(server)
    async with server.rest("alice") as alice, server.rest("bob") as bob:
        run = await alice.post(
            f"/projects/{project_id}/executions",
            json={"command": "echo started; sleep 120", "wait_s": 0},
        )
        execution_id = run.json()["execution_id"]
        try:
            async with bob.stream(
                "GET",
                f"/executions/{execution_id}/output",
                headers={"Accept": "application/x-ndjson"},
            ) as response:
                lines = response.aiter_lines()
                with anyio.fail_after(30):
                    first = json.loads(await anext(lines))
                    assert "started" in first["stdout"]
                    await replace_token(server, data_dir, "bob")
                    rest = [json.loads(line) async for line in lines]
        finally:
            await alice.post(f"/executions/{execution_id}/cancel")
    assert len(rest) == 1, rest
    assert "token was replaced" in rest[0]["problem"]["detail"]
