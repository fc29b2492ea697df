"""``hello``, ``system.stats`` and ``system.shutdown``: what the VM is and how loaded it is."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from . import AGENT_VERSION, PROTOCOL_VERSION, methods
from .paths import Workspace

if TYPE_CHECKING:
    from .identity import Identity


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _int(text: Optional[str]) -> Optional[int]:
    if text is None or not text.strip().isdigit():
        return None
    return int(text)


def _meminfo() -> Dict[str, int]:
    values: Dict[str, int] = {}
    text = _read("/proc/meminfo") or ""
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[name] = int(fields[0]) * 1024
    return values


def _cgroup_memory() -> Dict[str, Optional[int]]:
    current = _int(_read("/sys/fs/cgroup/memory.current"))
    limit_text = _read("/sys/fs/cgroup/memory.max")
    if current is None:  # cgroup v1
        current = _int(_read("/sys/fs/cgroup/memory/memory.usage_in_bytes"))
        limit_text = _read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    limit = _int(limit_text)
    if limit is not None and limit >= 1 << 60:
        limit = None
    return {"used_bytes": current, "limit_bytes": limit}


def _cpu_usage_usec() -> Optional[int]:
    text = _read("/sys/fs/cgroup/cpu.stat")
    if text:
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == "usage_usec":
                return _int(value)
    nanos = _int(_read("/sys/fs/cgroup/cpuacct/cpuacct.usage"))
    return nanos // 1000 if nanos is not None else None


class System:
    def __init__(
        self,
        workspace: Workspace,
        capabilities: List[str],
        stop: Callable[[], None],
        run_as: "Optional[Identity]" = None,
    ) -> None:
        self.workspace = workspace
        self.capabilities = capabilities
        self.stop = stop
        self.run_as = run_as
        self.started = time.time()

    def handlers(self) -> Dict[str, Callable[[Dict[str, Any]], Any]]:
        return {
            methods.HELLO: self.hello,
            methods.SYSTEM_STATS: self.stats,
            methods.SYSTEM_SHUTDOWN: self.shutdown,
        }

    async def hello(self, params: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "protocol_version": PROTOCOL_VERSION,
            "agent_version": AGENT_VERSION,
            "capabilities": sorted(self.capabilities),
            "root": self.workspace.root,
            "python": platform.python_version(),
            "platform": sys.platform,
            "hostname": platform.node(),
            "pid": os.getpid(),
            "uid": os.getuid(),
            # Who commands run as: a uid other than the agent's keeps them off its channel.
            "command_uid": self.run_as.uid if self.run_as is not None else os.getuid(),
            "command_gid": self.run_as.gid if self.run_as is not None else os.getgid(),
        }

    async def stats(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """CPU over a short sample, memory (cgroup first, else the whole VM) and disk space."""
        first = _cpu_usage_usec()
        began = time.monotonic()
        await asyncio.sleep(0.1)
        second = _cpu_usage_usec()
        elapsed = time.monotonic() - began
        cpu_percent = None
        if first is not None and second is not None:
            cpu_percent = round((second - first) / (elapsed * 1e6) * 100, 1)
        meminfo = _meminfo()
        cgroup = _cgroup_memory()
        vfs = os.statvfs(self.workspace.root)
        return {
            "cpu_count": os.cpu_count(),
            "cpu_percent": cpu_percent,
            "load_average": list(os.getloadavg()),
            "memory_used_bytes": cgroup["used_bytes"]
            if cgroup["used_bytes"] is not None
            else meminfo.get("MemTotal", 0) - meminfo.get("MemAvailable", 0),
            "memory_limit_bytes": cgroup["limit_bytes"] or meminfo.get("MemTotal"),
            "disk_total_bytes": vfs.f_blocks * vfs.f_frsize,
            "disk_free_bytes": vfs.f_bavail * vfs.f_frsize,
            "uptime_s": round(time.time() - self.started, 1),
        }

    async def shutdown(self, params: Dict[str, Any]) -> Dict[str, Any]:
        asyncio.get_event_loop().call_soon(self.stop)
        return {"stopping": True}
