"""The agent's socket mode (what ``--vsock`` serves): a new connection replaces the session."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from guest_runtime.agent.__main__ import Agent
from guest_runtime.agent.channels import serve_listener
from guest_runtime.agent.rpc import DEFAULT_MAX_LINE_BYTES
from guest_runtime.client import GuestClient
from guest_runtime.errors import GuestUnreachable
from vm_drivers.qemu.process import wait_exit

pytestmark = pytest.mark.anyio


def pid_of(marker: str) -> int:
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                return int(entry)
        except OSError:
            continue
    raise AssertionError(f"no process runs {marker}")


@pytest.fixture
async def listening(tmp_path: Path) -> AsyncIterator[Path]:
    """An in-process agent serving a unix socket the way it serves AF_VSOCK."""
    root = tmp_path / "workspace"
    root.mkdir()
    path = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    agent = Agent(str(root), DEFAULT_MAX_LINE_BYTES)
    server = asyncio.ensure_future(serve_listener(agent, listener))
    try:
        yield path
    finally:
        agent.stopping.set()
        with anyio.fail_after(10):
            await server
        agent.execs.kill_all()


async def test_a_new_connection_ends_the_previous_session_and_kills_its_commands(
    listening: Path,
) -> None:
    marker = "313.25"
    first = GuestClient(await anyio.connect_unix(str(listening)))
    async with first:
        await first.hello()
        handle = await first.start_exec(f"echo started; exec sleep {marker}")
        with anyio.fail_after(10):
            async for event in handle.events():
                if getattr(event, "data", b"") == b"started\n":
                    break
        pid = pid_of(marker)  # the shell, or the sleep it became (same pid)
        async with GuestClient(await anyio.connect_unix(str(listening))) as second:
            await second.hello()
            with anyio.fail_after(10), pytest.raises(GuestUnreachable):
                async for _ in handle.events():
                    pass
            assert await wait_exit(pid, 10), "the old session's command still runs"
            assert (await second.write_file("still.txt", b"serving")).size == 7
