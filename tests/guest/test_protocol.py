"""The wire protocol: framing, bad input, multiplexing, and the agent's end of life."""

from __future__ import annotations

import json
import os
import sys

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from guest_runtime.agent import PROTOCOL_VERSION
from guest_runtime.bundle import agent_zipapp
from guest_runtime.client import GuestClient
from guest_runtime.errors import GuestUnreachable, InvalidRequest

from .conftest import AgentProcess

pytestmark = pytest.mark.anyio


async def exchange(agent: AgentProcess, *lines: bytes) -> list[dict[str, object]]:
    """Send raw lines; return one parsed answer per line sent."""
    stream = agent.stream
    reader = BufferedByteReceiveStream(stream)
    for line in lines:
        await stream.send(line)
    answers = []
    with anyio.fail_after(20):
        for _ in lines:
            answers.append(json.loads(await reader.receive_until(b"\n", 1 << 20)))
    return answers


async def test_hello_reports_version_and_capabilities(guest: GuestClient) -> None:
    info = await guest.hello()
    assert info.protocol_version == PROTOCOL_VERSION
    assert {"exec.start", "fs.read", "fs.write", "system.stats"} <= set(info.capabilities)


async def test_malformed_messages_get_errors_and_the_agent_keeps_serving(
    agent: AgentProcess,
) -> None:
    answers = await exchange(
        agent,
        b"this is not json\n",
        b"[1, 2, 3]\n",
        b'{"jsonrpc": "2.0", "id": 7}\n',
        b'{"jsonrpc": "2.0", "id": 8, "method": "no.such.method"}\n',
        b'{"jsonrpc": "2.0", "id": 9, "method": "fs.read", "params": "nope"}\n',
        b'{"jsonrpc": "2.0", "id": 10, "method": "fs.read", "params": {"path": 5}}\n',
        b'{"jsonrpc": "2.0", "id": 11, "method": "hello"}\n',
    )
    by_id = {answer.get("id"): answer for answer in answers}
    codes = sorted(answer["error"]["code"] for answer in answers if "error" in answer)  # type: ignore[index]
    assert codes == [-32700, -32602, -32601, -32600, -32600, -32600]
    assert "result" in by_id[11]


async def test_an_oversized_request_is_refused_without_being_buffered(
    agent: AgentProcess,
) -> None:
    huge = b'{"jsonrpc":"2.0","id":1,"method":"hello","pad":"' + b"x" * (100 << 20) + b'"}\n'
    answers = await exchange(agent, huge, b'{"jsonrpc":"2.0","id":2,"method":"hello"}\n')
    assert answers[0]["error"]["data"]["kind"] == "request_too_large"  # type: ignore[index]
    assert answers[1]["id"] == 2
    assert "result" in answers[1]


async def test_many_concurrent_calls_share_one_channel(guest: GuestClient) -> None:
    results: dict[int, bytes] = {}

    async def one(number: int) -> None:
        data = f"file {number}\n".encode()
        await guest.write_file(f"f/{number}.txt", data)
        handle = await guest.start_exec(["cat", f"f/{number}.txt"])
        output = b"".join([e.data async for e in handle.events() if hasattr(e, "data")])
        results[number] = output

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for number in range(60):
                group.start_soon(one, number)
    assert results == {n: f"file {n}\n".encode() for n in range(60)}


async def test_closing_the_channel_kills_running_commands(agent: AgentProcess) -> None:
    async with GuestClient(agent.stream) as client:
        handle = await client.start_exec("sleep 300")
        pid = (await client.call("exec.list"))["running"][0]["pid"]
    with anyio.fail_after(20):
        await agent.process.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(GuestUnreachable):
        async for _ in handle.events():
            pass


async def test_calls_after_the_agent_died_fail_cleanly(agent: AgentProcess) -> None:
    async with GuestClient(agent.stream) as client:
        await client.hello()
        agent.process.kill()
        await client.wait_closed()
        with pytest.raises(GuestUnreachable, match="closed the channel"):
            await client.hello()


async def test_invalid_parameters_raise_the_matching_error(guest: GuestClient) -> None:
    with pytest.raises(InvalidRequest, match="command"):
        await guest.call("exec.start", {"command": 42})


def test_the_agent_bundle_is_reproducible_and_stdlib_only() -> None:
    assert agent_zipapp() == agent_zipapp()
    import zipfile
    from io import BytesIO

    archive = zipfile.ZipFile(BytesIO(agent_zipapp().split(b"\n", 1)[1]))
    for name in archive.namelist():
        source = archive.read(name).decode()
        for line in source.splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")) and not stripped.startswith("from ."):
                module = stripped.split()[1].split(".")[0]
                assert module in sys.stdlib_module_names or module == "projectvm_agent", (
                    f"{name}: {stripped}"
                )
