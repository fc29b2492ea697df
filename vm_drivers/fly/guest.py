"""Fly guest sizes from a project's CPU and memory wishes.

Fly offers 1, 2, 4 or 8 shared CPUs, and up to 16 performance CPUs. Shared CPUs take 256 MB
to 2 GB of memory each, in steps of 256 MB; performance CPUs take 2 GB to 8 GB each, in steps
of 1 GB (fly.io/docs/machines/guides-examples/machine-sizing). A wish is rounded up to the
nearest size Fly sells, adding CPUs when the memory asked for needs them.
"""

from __future__ import annotations

import math
from typing import Literal

from vm_drivers.errors import DriverConfigError
from vm_drivers.fly.models import MachineGuest

__all__ = ["CPU_COUNTS", "guest_for", "preset_name"]

CPU_COUNTS = {"shared": (1, 2, 4, 8), "performance": (1, 2, 4, 8, 16)}
_MEMORY_PER_CPU_MB = {"shared": (256, 2048, 256), "performance": (2048, 8192, 1024)}


def guest_for(
    cpus: float, memory_mb: int, cpu_kind: Literal["shared", "performance"] = "shared"
) -> MachineGuest:
    """The smallest Fly guest with at least ``cpus`` CPUs and ``memory_mb`` of memory."""
    low, high, step = _MEMORY_PER_CPU_MB[cpu_kind]
    wanted = max(1, math.ceil(cpus))
    counts = CPU_COUNTS[cpu_kind]
    for count in counts:
        if count < wanted or memory_mb > high * count:
            continue
        memory = max(low * count, math.ceil(memory_mb / step) * step)
        return MachineGuest(cpu_kind=cpu_kind, cpus=count, memory_mb=memory)
    raise DriverConfigError(
        f"Fly has no {cpu_kind} guest with {cpus:g} CPUs and {memory_mb} MB of memory "
        f"(at most {counts[-1]} CPUs and {high} MB per CPU); ask for less"
    )


def preset_name(guest: MachineGuest) -> str:
    """Fly's name for a size, e.g. ``shared-cpu-1x`` (memory aside)."""
    kind = "shared-cpu" if guest.cpu_kind == "shared" else "performance"
    return f"{kind}-{guest.cpus}x"
