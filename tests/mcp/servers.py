"""Real ProjectVM server processes and HTTP servers for tests, started and stopped by the test."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from server.app import build_server
from server.config import ServerConfig
from server.http import serve_http


def stdio_params(
    data_dir: Path, agent: str = "alice", driver: str = "local"
) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "server.cli",
            "--data-dir",
            str(data_dir),
            "serve",
            "--driver",
            driver,
            "--agent",
            agent,
        ],
        env={**os.environ},
    )


def processes_with(marker: str) -> list[int]:
    """Pids of processes whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


@asynccontextmanager
async def http_server(config: ServerConfig) -> AsyncIterator[str]:
    """A ProjectVM HTTP server on a free port; yields the MCP URL."""
    handle = build_server(config, transport="http", agent=None)
    ready = anyio.Event()
    url = ""

    def on_ready(found: str) -> None:
        nonlocal url
        url = found
        ready.set()

    stop = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: serve_http(handle, "127.0.0.1", 0, on_ready=on_ready, stop=stop))
        with anyio.fail_after(30):
            await ready.wait()
        try:
            yield url
        finally:
            stop.set()


@asynccontextmanager
async def http_client(url: str, token: str | None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def raw_http() -> httpx2.AsyncClient:
    return httpx2.AsyncClient(timeout=30)
