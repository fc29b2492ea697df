"""Requests built to cost the server far more than they cost the sender (round three).

One agent's request must not stall the event loop every agent shares, nor make the server
build an answer a hundred times its size. Measured against a real ``projectvm serve --http``
process; what is tested happens before any VM is involved, so it runs once, on the ``process``
driver.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from tests.security.http_attacks import LiveServer, StallMeter, live_server
from tests.security.raw_mcp import RawSession

pytestmark = pytest.mark.anyio

# Each attack body is about a megabyte: on main, its validation errors took seconds of the
# event loop to list and answered 50 to 100 MB.
ITEMS = 300_000
LONGEST_STALL_S = 0.5
LARGEST_ANSWER = 64 * 1024


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[LiveServer]:
    async with live_server(data_dir) as live:
        yield live


async def rest_edit_with_bad_edits(server: LiveServer, project_id: str) -> bytes:
    async with server.rest("bob") as bob:
        body = {"edits": [1] * ITEMS}
        response = await bob.patch(f"/projects/{project_id}/files/notes.txt", json=body)
    assert response.status_code == 422, response.text[:500]
    return response.content


async def rest_command_with_bad_env(server: LiveServer, project_id: str) -> bytes:
    async with server.rest("bob") as bob:
        body = {"command": "true", "env": {f"V{n}": n for n in range(ITEMS // 3)}}
        response = await bob.post(f"/projects/{project_id}/executions", json=body)
    assert response.status_code == 422, response.text[:500]
    return response.content


async def rest_body_of_unknown_fields(server: LiveServer, project_id: str) -> bytes:
    async with server.rest("bob") as bob:
        body = {f"field{n}": 0 for n in range(ITEMS // 3)}
        response = await bob.post(f"/projects/{project_id}/executions", json=body)
    assert response.status_code == 422, response.text[:500]
    return response.content


async def rest_project_with_bad_settings(server: LiveServer, project_id: str) -> bytes:
    async with server.rest("bob") as bob:
        body = {"name": "costly", "settings": {"command_denylist": [1] * ITEMS}}
        response = await bob.post("/projects", json=body)
    assert response.status_code == 422, response.text[:500]
    return response.content


async def mcp_edit_with_bad_edits(server: LiveServer, project_id: str) -> bytes:
    async with httpx2.AsyncClient(timeout=120) as http:
        session = await RawSession.open(http, server.mcp, server.tokens["bob"])
        arguments = {"project_id": project_id, "path": "notes.txt", "edits": [1] * ITEMS}
        message = session.request_message(
            "tools/call", {"name": "edit_file", "arguments": arguments}
        )
        async with session.streaming(message) as response:
            raw = b"".join([chunk async for chunk in response.aiter_bytes()])
    answers = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith(b"data:")]
    answer = answers[-1] if answers else json.loads(raw)
    assert answer.get("error") or answer["result"]["isError"], str(answer)[:500]
    return raw


async def websocket_run_with_bad_env(server: LiveServer, project_id: str) -> bytes:
    protocols = [Subprotocol("projectvm.v1"), Subprotocol(f"bearer.{server.tokens['bob']}")]
    async with connect(server.ws_url(project_id), subprotocols=protocols, max_size=None) as ws:
        await ws.recv()  # hello
        env = {f"V{n}": n for n in range(ITEMS // 3)}
        run = {"stream": "execution", "type": "run", "command": "true", "env": env}
        await ws.send(json.dumps(run))
        answer = await ws.recv()
    assert json.loads(answer)["type"] == "error", str(answer)[:500]
    return answer.encode() if isinstance(answer, str) else answer


async def rest_terminal_write_with_bad_keys(server: LiveServer, project_id: str) -> bytes:
    async with server.rest("bob") as bob:
        body = {"keys": [1] * ITEMS}
        response = await bob.post("/terminals/exe_0123456789abcdef/input", json=body)
    assert response.status_code == 422, response.text[:500]
    return response.content


Attack = Callable[[LiveServer, str], Awaitable[bytes]]
ATTACKS: dict[str, Attack] = {
    "REST edit_file, a list of wrong edits": rest_edit_with_bad_edits,
    "REST run_command, an env of wrong values": rest_command_with_bad_env,
    "REST run_command, a body of unknown fields": rest_body_of_unknown_fields,
    "REST create_project, a setting of wrong patterns": rest_project_with_bad_settings,
    "MCP edit_file, a list of wrong edits": mcp_edit_with_bad_edits,
    "WebSocket run, an env of wrong values": websocket_run_with_bad_env,
    "REST terminal_write, a list of wrong keys": rest_terminal_write_with_bad_keys,
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_a_body_of_a_million_wrong_items_is_refused_at_once_in_a_few_words(
    server: LiveServer, attack: str
) -> None:
    async with server.rest("alice") as alice:
        created = await alice.post("/projects", json={"name": "target"})
        project_id = created.json()["project_id"]
        await alice.put(f"/projects/{project_id}/members/bob", json={"access_level": "read_write"})
    meter = StallMeter(server.base)
    async with meter.measuring():
        answer = await ATTACKS[attack](server, project_id)
    print(f"{attack}: {len(answer)} bytes answered; /healthz stalled up to {meter.worst:.2f} s")
    assert len(answer) < LARGEST_ANSWER, f"a {len(answer)}-byte answer: {answer[:300]!r}"
    assert meter.worst < LONGEST_STALL_S, f"the event loop stalled {meter.worst:.2f} s"


async def test_json_nested_too_deeply_is_malformed_input_not_a_server_error(
    server: LiveServer,
) -> None:
    async with server.rest("bob") as bob:
        deep = "[" * 100_000 + "]" * 100_000
        response = await bob.post(
            "/projects", content=deep, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text[:300]
        assert response.json()["type"].endswith("#malformed-json")
        assert "nests" in response.json()["detail"]
        huge_number = '{"name": ' + "7" * 5000 + "}"
        response = await bob.post(
            "/projects", content=huge_number, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text[:300]


async def test_a_websocket_message_nested_too_deeply_is_refused_and_the_socket_serves_on(
    server: LiveServer,
) -> None:
    async with server.rest("bob") as bob:
        project_id = (await bob.post("/projects", json={"name": "deep"})).json()["project_id"]
    protocols = [Subprotocol("projectvm.v1"), Subprotocol(f"bearer.{server.tokens['bob']}")]
    async with connect(server.ws_url(project_id), subprotocols=protocols) as ws:
        await ws.recv()  # hello
        await ws.send("[" * 100_000 + "]" * 100_000)
        refusal: dict[str, Any] = json.loads(await ws.recv())
        assert refusal["type"] == "error", refusal
        await ws.send(json.dumps({"stream": "session", "type": "ping", "id": 1}))
        assert json.loads(await ws.recv()) == {"stream": "session", "type": "pong", "id": 1}
