"""Per-sandbox cgroups for the local driver: process, memory and CPU limits.

A sandbox joins its cgroups before bubblewrap starts (a shell writes its own pid, then execs),
so every process in it is counted from the first. Works on cgroup v1 (one hierarchy per
controller) and v2 (unified, when the controllers are delegated to us); the cgroups nest under
this server's own, so a container running ProjectVM keeps its own limits. Where a controller
cannot be used (no permission, not delegated) the limit is skipped and ``status`` says why.

A sandbox's cgroup is removed when it ends, and this installation's group with it once it holds
no sandbox; ``reap`` removes what a killed server left behind.
"""

from __future__ import annotations

import errno
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import anyio

__all__ = ["CgroupLimits", "Cgroups"]

log = logging.getLogger("projectvm.cgroups")

ROOT = Path("/sys/fs/cgroup")
# A sandbox's processes die with it, but the kernel reaps them asynchronously.
RELEASE_WAIT_S = 5.0
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupLimits:
    pids: int | None = None
    memory_bytes: int | None = None
    cpus: float | None = None


@dataclass
class _Controller:
    name: str
    directory: Path  # where this server's cgroup is for the controller


@dataclass
class Cgroups:
    """The cgroups of one driver instance (under ``<own cgroup>/<group>``)."""

    group: str = "projectvm"
    version: int = 0
    controllers: dict[str, _Controller] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    @classmethod
    def detect(cls, group: str = "projectvm") -> Cgroups:
        found = cls(group=group)
        try:
            lines = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError as err:
            found.problems["all"] = f"cannot read /proc/self/cgroup: {err}"
            return found
        own = {}
        for line in lines:
            _, names, path = line.split(":", 2)
            for name in names.split(",") if names else [""]:
                own[name] = path.lstrip("/")
        if (ROOT / "cgroup.controllers").exists():
            found.version = 2
            base = ROOT / own.get("", "")
            available = set((ROOT / "cgroup.controllers").read_text().split())
            for name in ("pids", "memory", "cpu"):
                if name in available:
                    found.controllers[name] = _Controller(name, base)
                else:
                    found.problems[name] = "not available in the unified hierarchy"
        else:
            found.version = 1
            for name in ("pids", "memory", "cpu"):
                mount = ROOT / name
                if mount.is_dir() and name in own:
                    found.controllers[name] = _Controller(name, mount / own[name])
                else:
                    found.problems[name] = f"no cgroup v1 hierarchy at {mount}"
        return found

    def _dir(self, controller: _Controller, vm_id: str) -> Path:
        return controller.directory / self.group / vm_id

    def _settings(self, name: str, limits: CgroupLimits) -> dict[str, str]:
        if name == "pids" and limits.pids:
            return {"pids.max": str(limits.pids)}
        if name == "memory" and limits.memory_bytes:
            key = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
            return {key: str(limits.memory_bytes)}
        if name == "cpu" and limits.cpus:
            quota = int(limits.cpus * CPU_PERIOD_US)
            if self.version == 2:
                return {"cpu.max": f"{quota} {CPU_PERIOD_US}"}
            return {"cpu.cfs_period_us": str(CPU_PERIOD_US), "cpu.cfs_quota_us": str(quota)}
        return {}

    def prepare(self, vm_id: str, limits: CgroupLimits) -> list[Path]:
        """Create the sandbox's cgroups with ``limits``; return the ``cgroup.procs`` to join."""
        join: list[Path] = []
        for name, controller in self.controllers.items():
            settings = self._settings(name, limits)
            if not settings:
                continue
            directory = self._dir(controller, vm_id)
            try:
                self._make(controller, name, directory)
                for key, value in settings.items():
                    (directory / key).write_text(value)
            except OSError as err:
                self.problems[name] = f"cannot set {name} limits under {directory}: {err.strerror}"
                log.warning("%s", self.problems[name])
                continue
            procs = directory / "cgroup.procs"
            if procs not in join:
                join.append(procs)
        return join

    def _make(self, controller: _Controller, name: str, directory: Path) -> None:
        # Another server process of this installation may remove the (then empty) group
        # between our mkdirs: try once more.
        for attempt in (1, 2):
            try:
                if self.version == 2:
                    self._delegate(controller.directory / self.group, name)
                directory.mkdir(parents=True, exist_ok=True)
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise

    def _delegate(self, group_dir: Path, name: str) -> None:
        """v2: a controller must be enabled in every parent's subtree_control to be usable."""
        group_dir.mkdir(parents=True, exist_ok=True)
        control = group_dir / "cgroup.subtree_control"
        if name not in control.read_text().split():
            control.write_text(f"+{name}")

    async def release(self, vm_id: str) -> None:
        """Remove the sandbox's cgroups once the kernel has reaped its last processes."""
        for controller in self.controllers.values():
            directory = self._dir(controller, vm_id)
            with anyio.move_on_after(RELEASE_WAIT_S):
                # No event to wait on portably (v1 has none): poll, briefly and bounded.
                while _members(directory):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            _remove(directory, warn=True)
            # The installation's group goes too once no sandbox is left in it.
            _remove(directory.parent, warn=False)

    def reap(self) -> list[Path]:
        """Remove this installation's sandbox cgroups that no process is in any more (left by a
        server that was killed), and the group itself if that empties it; return what went."""
        removed = []
        for controller in self.controllers.values():
            group_dir = controller.directory / self.group
            try:
                children = [path for path in group_dir.iterdir() if path.is_dir()]
            except OSError:
                continue
            for child in children:
                if not _members(child) and _remove(child, warn=True):
                    removed.append(child)
            if _remove(group_dir, warn=False):
                removed.append(group_dir)
        return removed

    @staticmethod
    def join_command(procs: list[Path], argv: list[str]) -> list[str]:
        """``argv`` run by a shell that first moves itself into ``procs`` (children follow)."""
        if not procs:
            return argv
        moves = " && ".join(f"echo $$ > {shlex.quote(str(path))}" for path in procs)
        return ["/bin/sh", "-c", f'{moves} && exec "$@"', "projectvm-sandbox", *argv]

    def status(self) -> str:
        usable = ", ".join(sorted(self.controllers)) or "none"
        text = f"cgroup v{self.version or '?'}: {usable}"
        if self.problems:
            text += "; not usable: " + "; ".join(f"{k} ({v})" for k, v in self.problems.items())
        return text


def _remove(directory: Path, *, warn: bool) -> bool:
    """rmdir a cgroup; the kernel refuses while it has processes or children (then False;
    ``warn`` logs why, for a cgroup that should have been empty)."""
    try:
        directory.rmdir()
        return True
    except OSError as err:
        if warn and err.errno != errno.ENOENT:
            log.warning("cannot remove %s: %s", directory, err.strerror)
        return False


def _members(directory: Path) -> bool:
    try:
        return bool((directory / "cgroup.procs").read_text().strip())
    except OSError:
        return False
