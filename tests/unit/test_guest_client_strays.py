"""GuestClient routes only what belongs to its channel; the rest is counted and dropped."""

from __future__ import annotations

import json
import socket
from typing import Any

import anyio
import pytest

from guest_runtime.client import GuestClient
from guest_runtime.protocol import ExecExit, ExecOutput

pytestmark = pytest.mark.anyio


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def output(exec_id: str, seq: int, data: str) -> bytes:
    params = {"exec_id": exec_id, "seq": seq, "stream": "stdout", "data": data}
    return line({"jsonrpc": "2.0", "method": "exec.output", "params": params})


def exit_of(exec_id: str, code: int) -> bytes:
    params = {"exec_id": exec_id, "exit_code": code}
    return line({"jsonrpc": "2.0", "method": "exec.exit", "params": params})


async def test_stray_messages_are_counted_and_never_routed() -> None:
    host_end, guest_end = socket.socketpair()
    stream = await anyio.abc.SocketStream.from_socket(host_end)
    guest = await anyio.abc.SocketStream.from_socket(guest_end)
    async with guest, GuestClient(stream) as client:

        async def answer_next() -> None:
            request = json.loads((await guest.receive()).split(b"\n")[0])
            await guest.send(line({"jsonrpc": "2.0", "id": request["id"], "result": {}}))

        async with anyio.create_task_group() as group:
            group.start_soon(answer_next)
            handle = await client.start_exec("true", exec_id="mine")
        await guest.send(
            output("mine", 0, "cmVhbAo=")  # "real\n"
            + output("mine", 0, "Zm9yZ2VkCg==")  # a second seq 0: not the agent's
            + output("other", 0, "Zm9yZ2VkCg==")  # an execution this channel never started
            + line({"jsonrpc": "2.0", "id": 999, "result": {}})  # an id never sent
            + exit_of("mine", 3)
            + exit_of("mine", 0)  # it has ended already
        )
        events = []
        with anyio.fail_after(10):
            async for event in handle.events():
                events.append(event)
        assert [type(e) for e in events] == [ExecOutput, ExecExit]
        assert isinstance(events[0], ExecOutput)
        assert events[0].data == b"real\n"
        assert isinstance(events[1], ExecExit)
        assert events[1].exit_code == 3
        # The last stray arrives after the exit was delivered: a real round trip settles it.
        async with anyio.create_task_group() as group:
            group.start_soon(answer_next)
            await client.call("system.stats")
        assert client.strays == 4
