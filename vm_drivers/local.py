"""The ``local`` driver: each project VM is a bubblewrap sandbox on this host.

The sandbox sees the host's root read-only (minus private places such as ``/home``, ``/root``,
``/run`` and ProjectVM's own data directory), a private ``/tmp``, ``/proc`` and ``/dev``, no
network unless the project allows egress, and the project's workspace directory read-write at
``/workspace``. The guest agent is the sandbox's main process; its stdio is the channel (see
:mod:`vm_drivers.host_process`), and a cgroup per sandbox bounds its processes, memory and CPU.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import ClassVar

import anyio

from vm_drivers.base import Availability, DriverContext, VMDriver
from vm_drivers.cgroups import CgroupLimits, Cgroups
from vm_drivers.config import LocalDriverConfig
from vm_drivers.errors import DriverUnavailable
from vm_drivers.host_process import HostProcessDriver, HostVMRecord

__all__ = ["LocalDriver"]

SANDBOX_WORKSPACE = "/workspace"
SANDBOX_AGENT = "/.projectvm/agent.pyz"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Never visible in a sandbox: they are per-boot or per-sandbox in a real VM.
ALWAYS_PRIVATE = {"proc", "dev", "sys", "tmp", "workspace", "lost+found", ".projectvm"}
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)"


class LocalDriver(HostProcessDriver):
    name: ClassVar[str] = "local"
    install_hint: ClassVar[str] = INSTALL_HINT

    def __init__(self, config: LocalDriverConfig, context: DriverContext) -> None:
        super().__init__(config.root_dir or context.data_dir / "local", context)
        self.config = config
        self.data_dir = context.data_dir
        self.cgroups = Cgroups.detect(f"projectvm-{context.instance_id}")
        self._cgroup_of: dict[str, str] = {}

    def check_usable(self) -> None:
        self._bwrap()
        self._python()

    # -- the sandbox --------------------------------------------------------------------------

    def _python(self) -> str:
        candidates = [self.config.python] if self.config.python else []
        candidates += ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        for candidate in candidates:
            if candidate and os.access(candidate, os.X_OK) and not self._hidden(candidate):
                return candidate
        raise DriverUnavailable(
            "local",
            "no python3 is visible inside the sandbox",
            "install python3 (apt-get install python3) or set the local driver's python option",
        )

    def _hidden(self, path: str) -> bool:
        real = os.path.realpath(path)
        hidden = [*self.config.hidden_paths, str(self.data_dir)]
        return any(real == h or real.startswith(h.rstrip("/") + "/") for h in hidden)

    def _bwrap(self) -> str:
        found = shutil.which(self.config.bwrap)
        if found is None:
            raise DriverUnavailable("local", f"{self.config.bwrap!r} was not found", INSTALL_HINT)
        return found

    def agent_command(self, record: HostVMRecord, agent: Path) -> list[str]:
        argv = [self._bwrap(), "--die-with-parent", "--new-session", "--unshare-all"]
        if record.network == "egress":
            argv.append("--share-net")
        if os.geteuid() == 0:
            argv += ["--cap-drop", "ALL"]
        hidden = {p.rstrip("/") for p in self.config.hidden_paths}
        for entry in sorted(os.listdir("/")):
            source = f"/{entry}"
            if entry in ALWAYS_PRIVATE:
                continue
            if source in hidden:
                if os.path.isdir(source) and not os.path.islink(source):
                    argv += ["--dir", source]
                continue
            if os.path.islink(source):
                argv += ["--symlink", os.readlink(source), source]
            else:
                argv += ["--ro-bind", source, source]
        argv += [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--ro-bind-try",
            "/sys",
            "/sys",
        ]
        # Other projects' workspaces live here: never visible, wherever they are configured.
        for private in {os.path.realpath(self.data_dir), os.path.realpath(self.root)}:
            if not self._under_hidden(private, hidden) and os.path.isdir(private):
                argv += ["--tmpfs", private]
        argv += [
            "--bind",
            str(self.workspace_dir(record.vm_id)),
            SANDBOX_WORKSPACE,
            "--ro-bind",
            str(agent),
            SANDBOX_AGENT,
            "--chdir",
            SANDBOX_WORKSPACE,
            "--hostname",
            f"pvm-{record.project_id[-12:]}",
            "--clearenv",
            "--setenv",
            "PATH",
            SANDBOX_PATH,
            "--setenv",
            "HOME",
            SANDBOX_WORKSPACE,
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--setenv",
            "PROJECTVM_PROJECT_ID",
            record.project_id,
            "--",
            self._python(),
            SANDBOX_AGENT,
            "--root",
            SANDBOX_WORKSPACE,
        ]
        return argv

    @staticmethod
    def _under_hidden(path: str, hidden: set[str]) -> bool:
        top = "/" + path.strip("/").split("/", 1)[0]
        return top in hidden or top.strip("/") in ALWAYS_PRIVATE

    def _limits(self, record: HostVMRecord) -> CgroupLimits:
        memory_mb = record.memory_mb or self.config.memory_mb
        return CgroupLimits(
            pids=record.pids_limit or self.config.pids_limit,
            memory_bytes=memory_mb * 1024 * 1024 if memory_mb else None,
            cpus=record.cpus or self.config.cpus,
        )

    async def prepare(self, record: HostVMRecord, argv: list[str]) -> list[str]:
        # A cgroup per sandbox (not per VM): another server process sharing this data
        # directory may run its own sandbox of the same VM, with its own lifetime.
        group = f"{record.vm_id}.{secrets.token_hex(4)}"
        self._cgroup_of[record.vm_id] = group
        procs = self.cgroups.prepare(group, self._limits(record))
        return Cgroups.join_command(procs, argv)

    async def released(self, vm_id: str) -> None:
        group = self._cgroup_of.pop(vm_id, None)
        if group is not None:
            await self.cgroups.release(group)

    async def probe(self) -> Availability:
        try:
            bwrap = self._bwrap()
            python = self._python()
        except DriverUnavailable as err:
            return Availability(driver=self.name, usable=False, reason=str(err))
        result = await anyio.run_process(
            [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--", "/bin/true"],
            check=False,
        )
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip()
            return Availability(
                driver=self.name,
                usable=False,
                reason=f"bubblewrap cannot create a sandbox here: {detail}; unprivileged user "
                "namespaces may be disabled (sysctl kernel.unprivileged_userns_clone=1)",
            )
        version = await anyio.run_process([bwrap, "--version"], check=False)
        return Availability(
            driver=self.name,
            usable=True,
            reason="bubblewrap sandboxes work here",
            details={
                "bwrap": f"{bwrap} ({version.stdout.decode().strip()})",
                "python": python,
                "limits": self.cgroups.status(),
            },
        )


_: type[VMDriver] = LocalDriver
