"""Small helpers for tests that talk MCP."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp import Client

from server.core.agents import Agents
from server.store import Store


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed; return its structured result."""
    result = await client.call_tool(tool, arguments)
    text = " ".join(getattr(block, "text", "") for block in result.content)
    assert not result.is_error, f"{tool} failed: {text}"
    assert result.structured_content is not None, f"{tool} returned no structured content"
    return result.structured_content


async def call_error(client: Client, tool: str, **arguments: Any) -> str:
    """Call a tool that must fail; return the error text the agent reads."""
    result = await client.call_tool(tool, arguments)
    text = " ".join(getattr(block, "text", "") for block in result.content)
    assert result.is_error, f"{tool} unexpectedly succeeded: {result.structured_content}"
    return text


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 30, what: str = "the condition"
) -> None:
    """Re-run ``check`` (each run is a real round trip) until it holds, within ``timeout``."""
    try:
        with anyio.fail_after(timeout):
            while not await check():
                await anyio.lowlevel.checkpoint()
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {timeout}s") from None


async def issue_token(store: Store, agent_id: str) -> str:
    """A new agent with a token, as `projectvm agents add` makes it."""
    return await Agents(store).issue_token(agent_id)


def outside_address() -> str | None:
    """A non-loopback IPv4 address of this host: a listener there is outside every sandbox,
    reachable with egress (None if the host has none, or no iproute2 to ask)."""
    if shutil.which("ip") is None:
        return None
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True)
    for line in shown.stdout.splitlines():
        address = line.split()[3].split("/")[0]
        if not address.startswith("127."):
            return address
    return None
