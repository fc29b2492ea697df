"""Run a command through a GuestClient and collect what it printed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from guest_runtime.client import GuestClient
from guest_runtime.protocol import ExecExit, ExecOutput

# Lists the command lines of every process in the VM (no ps needed), one per line.
LIST_PROCESSES = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"


async def run(
    guest: GuestClient, command: str | Sequence[str], *, deadline: float = 120, **options: Any
) -> tuple[ExecExit, bytes, bytes, list[ExecOutput]]:
    handle = await guest.start_exec(command, **options)
    stdout, stderr = bytearray(), bytearray()
    chunks: list[ExecOutput] = []
    with anyio.fail_after(deadline):
        async for event in handle.events():
            if isinstance(event, ExecOutput):
                chunks.append(event)
                (stdout if event.stream == "stdout" else stderr).extend(event.data)
    assert handle.exit is not None
    return handle.exit, bytes(stdout), bytes(stderr), chunks
