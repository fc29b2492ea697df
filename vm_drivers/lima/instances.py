"""Lima instance lifecycle with Lima 2.x's traps defused.

Every verb looks at ``limactl list --json NAME`` first and acts only when it has to, which makes
each one idempotent and keeps clear of three behaviours of limactl:

- ``start NAME`` on a name that does not exist silently *creates* an instance from
  ``template:default`` (deprecated, still works): ``start`` here never runs on a missing name;
- ``stop`` on an instance that is not Running fails: here a stopped instance is simply done;
- ``create`` on an existing name fails: here the caller decides what an existing one means.

Calls on one instance are serialised with a lock (two ``limactl start`` at once fail spuriously).
A start that times out is forced down (``stop -f``) and tried once more; a failure carries the
tail of the host agent's log, where Lima writes why a VM did not come up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import anyio

from vm_drivers.errors import DriverError, DriverTimeout, DriverUnavailable, VMOperationFailed
from vm_drivers.lima.channel import tail
from vm_drivers.lima.limactl import Limactl, LimaInstance

__all__ = ["Instances"]

RUNNING = "Running"
STOPPED = "Stopped"
BROKEN = "Broken"


class Instances:
    def __init__(self, limactl: Limactl, *, stop_timeout_s: float) -> None:
        self.limactl = limactl
        self.stop_timeout_s = stop_timeout_s
        self._locks: dict[str, anyio.Lock] = {}

    def lock(self, name: str) -> anyio.Lock:
        return self._locks.setdefault(name, anyio.Lock())

    async def get(self, name: str) -> LimaInstance | None:
        return await self.limactl.instance(name)

    async def create(self, name: str, lima_yaml: Path) -> bool:
        """Create ``name`` from ``lima_yaml`` unless it exists; True if this call created it."""
        if await self.get(name) is not None:
            return False
        await self.limactl.run(
            "create", f"--name={name}", str(lima_yaml), action=f"creating Lima instance {name}"
        )
        return True

    async def start(self, name: str, *, timeout_s: float) -> None:
        """Bring ``name`` to Running (started by this call, or already). Never creates it.

        A ``limactl start`` that returned 0 waited for ssh and provisioning: the instance is
        ready then (its Running status alone would not say so)."""
        instance = await self.get(name)
        if instance is None:
            raise VMOperationFailed(
                f"Lima instance {name} does not exist (deleted outside ProjectVM?); starting it "
                "would make a new, empty one: destroy the project VM and create it again"
            )
        if instance.status == RUNNING:
            return
        if instance.status == BROKEN:
            raise VMOperationFailed(
                f"Lima instance {name} is Broken ({'; '.join(instance.errors or [])}); look at "
                f"{instance.dir} or `limactl delete -f {name}` and create the VM again"
            )
        try:
            await self._start(instance, timeout_s)
        except DriverTimeout:
            # A stuck boot: force it down and give it one more chance, as Lima's docs advise.
            await self.force_stop(name)
            await self._start(instance, timeout_s)

    async def _start(self, instance: LimaInstance, timeout_s: float) -> None:
        name = instance.name
        try:
            await self.limactl.run(
                "start",
                f"--timeout={max(1, math.ceil(timeout_s))}s",
                name,
                timeout_s=timeout_s + 30,  # limactl's own deadline fires first
                action=f"starting Lima instance {name}",
            )
        except DriverUnavailable:
            raise
        except DriverError as err:
            raise type(err)(f"{err}; host agent log: {await self.log_tail(instance)}") from err

    async def stop(self, name: str) -> None:
        """Stop ``name`` if it runs (gracefully, then by force). Absent or stopped: done."""
        instance = await self.get(name)
        if instance is None or instance.status != RUNNING:
            return
        try:
            await self.limactl.run(
                "stop",
                name,
                timeout_s=self.stop_timeout_s,
                action=f"stopping Lima instance {name}",
            )
        except (DriverTimeout, VMOperationFailed):
            await self.force_stop(name)

    async def force_stop(self, name: str) -> None:
        await self.limactl.run("stop", "-f", name, action=f"force-stopping Lima instance {name}")

    async def delete(self, name: str) -> None:
        """Delete ``name`` and its disk, running or not. Absent: done (limactl says so too)."""
        await self.limactl.run("delete", "-f", name, action=f"deleting Lima instance {name}")

    async def edit(self, name: str, flags: Sequence[str]) -> None:
        """Change a stopped instance's settings (``--cpus``, ``--memory``, ``--set`` ...)."""
        await self.limactl.run("edit", name, *flags, action=f"editing Lima instance {name}")

    @staticmethod
    async def log_tail(instance: LimaInstance) -> str:
        if not instance.dir:
            return "(no instance directory)"
        return await tail(Path(instance.dir) / "ha.stderr.log")
