"""The project WebSocket with a real client (the ``websockets`` package) against the real
server (uvicorn with wsproto): a resumable event feed, live output, stdin, per-message access,
and a handshake that refuses strangers, foreign pages and tokens in the wrong place."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from tests.rest.conftest import MakeProject, Server

pytestmark = pytest.mark.anyio

PROTOCOL = Subprotocol("projectvm.v1")


def bearer(server: Server, agent: str) -> list[Subprotocol]:
    return [PROTOCOL, Subprotocol(f"bearer.{server.tokens[agent]}")]


@asynccontextmanager
async def socket(server: Server, project_id: str, agent: str) -> AsyncIterator[ClientConnection]:
    async with connect(server.ws_url(project_id), subprotocols=bearer(server, agent)) as ws:
        hello = await receive(ws)
        assert hello["type"] == "hello"
        assert hello["agent_id"] == agent
        yield ws


async def receive(ws: ClientConnection, timeout: float = 30) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        message = json.loads(await ws.recv())
    assert isinstance(message, dict)
    return message


async def send(ws: ClientConnection, **message: Any) -> None:
    await ws.send(json.dumps(message))


async def refused_status(server: Server, project_id: str, **options: Any) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.ws_url(project_id), **options):
            pass
    return refused.value.response.status_code


async def test_a_client_that_reconnects_with_its_last_event_id_gets_every_event_once_in_order(
    server: Server, alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    writers = {"alice": "admin", "bob": "read_write", "carol": "read_write"}
    project_id = await rest_projects("busy", members={"bob": "read_write", "carol": "read_write"})
    files_each = 25
    received: list[int] = []

    async def write(agent: str) -> None:
        async with server.rest(agent) as client:
            for number in range(files_each):
                response = await client.put(
                    f"/projects/{project_id}/files/{agent}/{number}.txt", content=b"x"
                )
                assert response.status_code == 201, response.text

    async def read_with_reconnects() -> None:
        """Until the marker written last arrives; leaving after every few events (abruptly
        every other time) and coming back with the last id seen."""
        connection = 0
        while True:
            connection += 1
            async with socket(server, project_id, "carol") as ws:
                since = received[-1] if received else 0
                await send(ws, stream="events", type="subscribe", since_id=since, id=connection)
                assert (await receive(ws))["type"] == "ack"
                for _ in range(7):
                    message = await receive(ws)
                    assert message["type"] == "event", message
                    received.append(message["event"]["event_id"])
                    if message["event"]["data"].get("path") == "the-end":
                        return
                if connection % 2:
                    ws.transport.abort()

    async with anyio.create_task_group() as group:
        group.start_soon(read_with_reconnects)
        async with anyio.create_task_group() as writing:
            for agent in writers:
                writing.start_soon(write, agent)
        await alice_rest.put(f"/projects/{project_id}/files/the-end", content=b"")
    everything = await all_event_ids(alice_rest, project_id)
    assert received == everything, "every event exactly once, in order"
    assert len(everything) >= 3 * files_each


async def all_event_ids(client: httpx.AsyncClient, project_id: str) -> list[int]:
    ids: list[int] = []
    url: str | None = f"/projects/{project_id}/events?limit=20"
    while url is not None:
        page = await client.get(url)
        ids += [event["event_id"] for event in page.json()["events"]]
        link = page.headers.get("link")
        url = link.split(">")[0].removeprefix("</api/v1") if link else None
    return ids


async def test_output_streams_live_to_any_member_and_stdin_reaches_the_command(
    server: Server, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("live", members={"bob": "read_only"})
    script = "for i in 1 2 3; do echo $i; sleep 0.1; done; read answer; echo got $answer"
    async with (
        socket(server, project_id, "alice") as alice,
        socket(server, project_id, "bob") as bob,
    ):
        await send(
            alice, stream="execution", type="run", command=script, keep_stdin_open=True, id="r"
        )
        ack = await receive(alice)
        assert ack["type"] == "ack"
        assert ack["id"] == "r"
        execution_id = ack["result"]["execution_id"]
        await send(bob, stream="execution", type="subscribe", execution_id=execution_id)
        assert (await receive(bob))["type"] == "ack"
        output = ""
        while "3\n" not in output:
            message = await receive(alice)
            assert message["type"] == "output"
            output += message["stdout"]
        await send(alice, stream="execution", type="stdin", execution_id=execution_id, data="yes\n")
        while True:
            message = await receive(alice)
            if message["type"] == "exit":
                break
            if message["type"] == "output":
                output += message["stdout"]
        assert output == "1\n2\n3\ngot yes\n"
        assert message["status"] == "completed"
        assert message["exit_code"] == 0
        followed = ""
        while True:
            message = await receive(bob)
            if message["type"] == "exit":
                break
            followed += message.get("stdout", "")
        assert followed == output


async def test_access_is_checked_for_every_message(
    server: Server, alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("readers", members={"carol": "read_only"})
    ran = await alice_rest.post(
        f"/projects/{project_id}/executions",
        json={"command": "cat", "keep_stdin_open": True, "wait_s": 0},
    )
    execution_id = ran.json()["execution_id"]
    async with socket(server, project_id, "carol") as carol:
        await send(carol, stream="execution", type="run", command="true", id=1)
        refused = await receive(carol)
        assert refused["type"] == "error"
        assert refused["id"] == 1
        assert refused["problem"]["status"] == 403
        assert "needs read_write" in refused["problem"]["detail"]
        await send(carol, stream="execution", type="stdin", execution_id=execution_id, data="x")
        assert (await receive(carol))["problem"]["status"] == 403
        await send(carol, stream="session", type="ping", id="still-here")
        assert await receive(carol) == {"stream": "session", "type": "pong", "id": "still-here"}
        await send(carol, stream="telepathy", type="open")
        unknown = await receive(carol)
        assert "unknown stream 'telepathy'" in unknown["problem"]["detail"]
    await alice_rest.post(f"/executions/{execution_id}/cancel")


async def test_a_member_removed_while_connected_gets_nothing_more_and_is_told_why(
    server: Server, alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("leaving", members={"bob": "read_only"})
    async with socket(server, project_id, "bob") as bob:
        await send(bob, stream="events", type="subscribe", since_id=0)
        assert (await receive(bob))["type"] == "ack"
        kinds = []
        while "member.assigned" not in kinds:
            kinds.append((await receive(bob))["event"]["kind"])
        removed = await alice_rest.delete(f"/projects/{project_id}/members/bob")
        assert removed.status_code == 204
        await alice_rest.put(f"/projects/{project_id}/files/after.txt", content=b"secret")
        last = await receive(bob)
        assert last["type"] == "error"
        assert last["fatal"] is True
        assert "is visible to agent 'bob'" in last["problem"]["detail"]
        with pytest.raises(ConnectionClosed) as closed:
            await receive(bob)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403
    assert project_id in closed.value.rcvd.reason


async def test_the_handshake_refuses_before_accepting_whatever_is_not_right(
    server: Server, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("guarded")
    assert await refused_status(server, project_id, subprotocols=[PROTOCOL]) == 401
    wrong = [PROTOCOL, Subprotocol("bearer.pvm_wrong")]
    assert await refused_status(server, project_id, subprotocols=wrong) == 401
    foreign = await refused_status(
        server, project_id, subprotocols=bearer(server, "alice"), origin="https://evil.example"
    )
    assert foreign == 403
    assert await refused_status(server, project_id, subprotocols=bearer(server, "dave")) == 404
    token_only = [Subprotocol(f"bearer.{server.tokens['alice']}")]
    assert await refused_status(server, project_id, subprotocols=token_only) == 400
    own_page = server.base.replace("127.0.0.1", "localhost")
    async with connect(
        server.ws_url(project_id), subprotocols=bearer(server, "alice"), origin=own_page
    ) as ws:
        assert ws.subprotocol == PROTOCOL
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Protocol"] == PROTOCOL  # never the token


async def test_a_ticket_opens_one_socket_once(
    server: Server, alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("ticketed")
    other = await rest_projects("other")
    issued = await alice_rest.post("/ws-tickets", json={"project_id": project_id})
    assert issued.status_code == 201
    ticket = [PROTOCOL, Subprotocol(f"ticket.{issued.json()['ticket']}")]
    assert await refused_status(server, other, subprotocols=ticket) == 401
    issued = await alice_rest.post("/ws-tickets", json={"project_id": project_id})
    ticket = [PROTOCOL, Subprotocol(f"ticket.{issued.json()['ticket']}")]
    async with connect(server.ws_url(project_id), subprotocols=ticket) as ws:
        assert (await receive(ws))["agent_id"] == "alice"
    assert await refused_status(server, project_id, subprotocols=ticket) == 401
    async with server.rest("dave") as dave:
        stranger = await dave.post("/ws-tickets", json={"project_id": project_id})
    assert stranger.status_code == 404


async def test_output_resumes_from_a_since_cursor_without_repeats(
    server: Server, alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("resume")
    script = "for i in 1 2 3 4; do echo part $i; sleep 0.2; done"
    started = await alice_rest.post(
        f"/projects/{project_id}/executions", json={"command": script, "wait_s": 0}
    )
    execution_id = started.json()["execution_id"]
    async with socket(server, project_id, "alice") as first:
        await send(first, stream="execution", type="subscribe", execution_id=execution_id)
        assert (await receive(first))["type"] == "ack"
        piece = await receive(first)
        assert piece["type"] == "output"
        await send(first, stream="execution", type="unsubscribe", execution_id=execution_id)
        seen, cursor = piece["stdout"], piece["next_since"]
    async with socket(server, project_id, "alice") as again:
        await send(
            again, stream="execution", type="subscribe", execution_id=execution_id, since=cursor
        )
        assert (await receive(again))["type"] == "ack"
        while True:
            message = await receive(again)
            if message["type"] == "exit":
                break
            seen += message["stdout"]
    assert seen == "part 1\npart 2\npart 3\npart 4\n"
