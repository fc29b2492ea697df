"""Which server process owns a running execution, and whether that process still lives.

Several ProjectVM processes may share a data directory (one stdio server per MCP client, say).
Each running execution records its server's id, so a server that starts only marks as
interrupted the executions of servers that are gone, never those of a live neighbour.
"""

from __future__ import annotations

import os
import socket
from functools import cache

__all__ = ["server_is_alive", "this_server_id"]


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


@cache
def this_server_id() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '?'}"


def server_is_alive(server_id: str | None) -> bool:
    """True if ``server_id`` names a live process on this host (unknown hosts count as alive)."""
    if not server_id:
        return False
    host, _, rest = server_id.partition(":")
    pid_text, _, ticks = rest.partition(":")
    if host != socket.gethostname():
        return True  # another machine sharing the directory: not ours to judge
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    current = _start_ticks(pid)
    return ticks in ("?", "") or current is None or current == ticks
