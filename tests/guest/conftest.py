"""The guest agent as a plain subprocess (no sandbox): for protocol-level tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.stapled import StapledByteStream

from guest_runtime.bundle import write_agent_zipapp
from guest_runtime.client import GuestClient


@dataclass
class AgentProcess:
    process: Process
    root: Path

    @property
    def stream(self) -> StapledByteStream:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        return StapledByteStream(self.process.stdin, self.process.stdout)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[AgentProcess]:
    root = tmp_path / "workspace"
    root.mkdir()
    zipapp = write_agent_zipapp(tmp_path / "agent")
    process = await anyio.open_process(
        [sys.executable, str(zipapp), "--root", str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
    )
    try:
        yield AgentProcess(process, root)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.aclose()


@pytest.fixture
async def guest(agent: AgentProcess) -> AsyncIterator[GuestClient]:
    async with GuestClient(agent.stream) as client:
        await client.hello()
        yield client
