"""Real ProjectVM servers for tests, started and stopped by the test: the one place that knows
how (a ``projectvm serve`` process over stdio or HTTP, or an in-process HTTP server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
from anyio.abc import Process
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from server.domain.config import CONFIG_FILENAME, ServerConfig
from server.surfaces.http.serve import serve_http
from server.surfaces.mcp.server import build_server


def write_config(config: ServerConfig) -> None:
    """Put ``config``'s driver and driver options in its data directory's config file, so a
    server process started there (``serve_process``) runs the same backend as the test."""
    lines = [f"driver = {_toml(config.driver)}"]
    for name, options in config.drivers.items():
        lines.append(f"\n[drivers.{name}]")
        # TOML has no null: an option left at None is left out (its default).
        lines += [f"{key} = {_toml(value)}" for key, value in options.items() if value is not None]
    config.data_dir.mkdir(parents=True, exist_ok=True)
    (config.data_dir / CONFIG_FILENAME).write_text("\n".join(lines) + "\n")


def _toml(value: object) -> str:
    """A TOML value: JSON's strings, numbers and arrays are TOML's, tables become inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(value if isinstance(value, int | float | str) else str(value))


def stdio_params(
    data_dir: Path, agent: str = "alice", driver: str = "local"
) -> StdioServerParameters:
    command, *args = server_argv(data_dir, "serve", "--driver", driver, "--agent", agent)
    return StdioServerParameters(command=command, args=args, env={**os.environ})


def server_argv(data_dir: Path, *args: str) -> list[str]:
    """``projectvm --data-dir DATA_DIR ARGS...`` as this interpreter runs it."""
    return [sys.executable, "-m", "server.cli", "--data-dir", str(data_dir), *args]


def with_open_file_limit(argv: list[str], soft: int, hard: int) -> list[str]:
    """``argv`` run with its open-file limit (``ulimit -n``) set to ``soft`` and ``hard``."""
    code = (
        "import os, resource, sys; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
        "os.execv(sys.argv[3], sys.argv[3:])"
    )
    return [sys.executable, "-c", code, str(soft), str(hard), *argv]


@asynccontextmanager
async def serve_process(
    data_dir: Path,
    *,
    driver: str = "local",
    cwd: Path | None = None,
    open_files: tuple[int, int] | None = None,
) -> AsyncIterator[tuple[Process, str]]:
    """`projectvm serve --http` as a real process on a free port; yields it and its MCP URL.

    ``open_files`` (soft, hard) starts it under that open-file limit. Stopped (SIGTERM, then
    SIGKILL) when the block ends, unless the test killed it already.
    """
    argv = server_argv(data_dir, "serve", "--http", "--port", "0", "--driver", driver)
    process = await anyio.open_process(
        with_open_file_limit(argv, *open_files) if open_files else argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=str(cwd) if cwd else None,
        env={**os.environ},
    )
    try:
        assert process.stderr is not None
        seen = b""
        with anyio.fail_after(60):
            while b"/mcp" not in seen:
                seen += await process.stderr.receive()
        url = next(word for word in seen.decode().split() if word.startswith("http://"))
        yield process, url
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
                with anyio.move_on_after(30):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


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
