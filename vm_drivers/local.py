"""The ``local`` driver: each project VM is a bubblewrap sandbox on this host.

The sandbox sees the runtime image's Debian tree as its read-only root when one has been built,
else a minimal read-only view of the host's ``/usr`` and a few ``/etc`` files
(:mod:`vm_drivers.sandbox.root`); a private ``/tmp``, ``/proc`` and ``/dev``; no network, or
with ``network: egress`` a network namespace of its own behind user-mode networking
(:mod:`vm_drivers.sandbox.network`); and the project's workspace read-write at ``/workspace``.

When the server runs as root, a sandbox's uids map to an unprivileged host range
(:mod:`vm_drivers.sandbox.identity`) and its workspace is an ext4 disk image of
``max_storage_gb``, loop-mounted (:mod:`vm_drivers.kit.workspace_disk`), so the storage limit
is the filesystem's. Otherwise the sandbox has the server's own uid and a plain directory.

The guest agent is the sandbox's main process, its channel a socket of its own; a cgroup per
sandbox bounds its processes, memory and CPU, and goes when the sandbox ends.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import anyio
import anyio.abc

from vm_drivers.base import Availability, DriverContext, VMDriver
from vm_drivers.cgroups import CgroupLimits, Cgroups
from vm_drivers.config import LocalDriverConfig
from vm_drivers.errors import DriverError, DriverUnavailable
from vm_drivers.host_process import HostProcessDriver, HostVMRecord, log_tail
from vm_drivers.kit.streams import ProcessSocketStream
from vm_drivers.kit.workspace_disk import GIB, WorkspaceDisk, disk_bytes, disk_support
from vm_drivers.sandbox.identity import SandboxIdentity
from vm_drivers.sandbox.launch import SandboxPlan, check_stage, start_sandbox
from vm_drivers.sandbox.network import INSTALL_HINT as SLIRP_HINT
from vm_drivers.sandbox.network import UserModeNetwork, find_slirp4netns
from vm_drivers.sandbox.root import SandboxRoot, etc_files
from vm_drivers.sandbox.storage_watch import StorageWatch

__all__ = ["LocalDriver"]

log = logging.getLogger("projectvm.local")

INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)"
IMAGE_MARKER = Path("etc") / "projectvm-image"
TUN = "/dev/net/tun"
ROOT_TOOLS = ("setpriv", "unshare", "mount")


class LocalDriver(HostProcessDriver):
    name: ClassVar[str] = "local"
    install_hint: ClassVar[str] = INSTALL_HINT

    def __init__(self, config: LocalDriverConfig, context: DriverContext) -> None:
        super().__init__(config.root_dir or context.data_dir / "local", context)
        self.config = config
        self.data_dir = context.data_dir
        self.identity = SandboxIdentity.for_this_server(config.uid_base)
        self.cgroups = Cgroups.detect(f"projectvm-{context.instance_id}")
        # What a killed server of this installation left behind (finding 20).
        self.cgroups.reap()
        self._running: dict[str, _Running] = {}

    def check_usable(self) -> None:
        self._bwrap()
        self.sandbox_root().python(self.config.python)
        if self.identity.privileged:
            missing = [tool for tool in ROOT_TOOLS if shutil.which(tool) is None]
            if missing:
                raise DriverUnavailable(
                    "local",
                    f"{', '.join(missing)} not found (needed to map a sandbox's uids as root)",
                    "install util-linux and mount (apt-get install util-linux mount)",
                )

    def _bwrap(self) -> str:
        found = shutil.which(self.config.bwrap)
        if found is None:
            raise DriverUnavailable("local", f"{self.config.bwrap!r} was not found", INSTALL_HINT)
        return found

    # -- what the sandbox is made of ----------------------------------------------------------

    def sandbox_root(self) -> SandboxRoot:
        """The image's tree when it has been built (or is asked for), else the host view;
        decided at each start, so a tree built later is picked up."""
        if self.config.root == "host":
            return SandboxRoot(None, self.config.hidden_paths)
        tree = self.config.rootfs or self.data_dir / "images" / "trees" / "runtime"
        if (tree / IMAGE_MARKER).is_file():
            return SandboxRoot(tree, self.config.hidden_paths)
        if self.config.root == "image":
            raise DriverUnavailable(
                "local",
                f"no runtime image tree at {tree} (root = 'image')",
                "run `projectvm image build`, set the local driver's rootfs, or set root to 'auto'",
            )
        return SandboxRoot(None, self.config.hidden_paths)

    def _disk(self, vm_id: str) -> WorkspaceDisk:
        return WorkspaceDisk(self.root / "disks" / f"{vm_id}.ext4", self.workspace_dir(vm_id))

    def _disks_wanted(self) -> bool:
        if self.config.workspace_disks == "off":
            return False
        return self.config.workspace_disks == "on" or disk_support().usable

    def _sandbox_dir(self, vm_id: str) -> Path:
        return self.root / "sandboxes" / vm_id

    # -- the workspace ------------------------------------------------------------------------

    async def provision_workspace(self, record: HostVMRecord) -> HostVMRecord:
        # (The sandbox's stage gives the workspace to the sandbox's uid when it is not yet.)
        new = not self.records.exists(record.vm_id)
        if new and record.disk_gb and await anyio.to_thread.run_sync(self._disks_wanted):
            record = record.model_copy(update={"workspace_disk": True})
        if record.workspace_disk:
            size = disk_bytes(record.disk_gb or 0)
            disk = self._disk(record.vm_id)
            owner = self.identity.workspace_owner()
            in_use = self._channels.current(record.vm_id) is not None
            later = await anyio.to_thread.run_sync(lambda: disk.ensure(size, owner, in_use=in_use))
            if later:
                log.warning("%s", later)
        return record

    async def remove_workspace(self, vm_id: str) -> None:
        disk = self._disk(vm_id)
        if disk.exists() or disk.mounted():
            await anyio.to_thread.run_sync(disk.remove)
        await anyio.to_thread.run_sync(
            lambda: shutil.rmtree(self._sandbox_dir(vm_id), ignore_errors=True)
        )

    # -- the sandbox --------------------------------------------------------------------------

    def _limits(self, record: HostVMRecord) -> CgroupLimits:
        memory_mb = record.memory_mb or self.config.memory_mb
        return CgroupLimits(
            pids=record.pids_limit or self.config.pids_limit,
            memory_bytes=memory_mb * 1024 * 1024 if memory_mb else None,
            cpus=record.cpus or self.config.cpus,
        )

    def _plan(self, record: HostVMRecord, agent: Path, state: Path, workspace: Path) -> SandboxPlan:
        """The sandbox of ``record``: its /etc files are written into ``state``."""
        root = self.sandbox_root()
        hostname = f"pvm-{record.project_id[-12:]}"
        etc = state / "etc"
        files = etc_files(
            hostname=hostname,
            egress=record.network == "egress",
            user=self.identity.passwd_entry(),
            tree=root.tree,
        )
        etc.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (etc / name).write_text(text)
        staged = {"workspace": workspace, "agent.pyz": agent, "etc": etc}
        if root.tree is not None:
            staged["rootfs"] = root.tree
        return SandboxPlan(
            bwrap=self._bwrap(),
            identity=self.identity,
            root=root,
            python=root.python(self.config.python),
            hostname=hostname,
            egress=record.network == "egress",
            staged=staged,
            etc_names=sorted(files),
            # Workspace disks (ours, and the docker driver's) are none of this sandbox's business.
            foreign_mounts=[self.root / "workspaces", self.data_dir / "docker" / "disks"],
            workspace_disk=record.workspace_disk,
            environment={"PROJECTVM_PROJECT_ID": record.project_id},
            stage=check_stage(self.config.runtime_dir, self.identity)
            if self.identity.privileged
            else None,
        )

    async def start_agent(self, record: HostVMRecord, agent: Path) -> anyio.abc.ByteStream:
        # Ours from now on: a late close of the sandbox before must not unmount what this one
        # mounts (see _release).
        running = _Running(record.vm_id, disk=record.workspace_disk)
        self._running[record.vm_id] = running
        try:
            if record.workspace_disk:
                size = disk_bytes(record.disk_gb or 0)
                disk = self._disk(record.vm_id)
                await anyio.to_thread.run_sync(lambda: disk.ensure(size, None, in_use=False))
            plan = await anyio.to_thread.run_sync(
                self._plan,
                record,
                agent,
                self._sandbox_dir(record.vm_id),
                self.workspace_dir(record.vm_id),
            )
            slirp = find_slirp4netns(self.config.slirp4netns) if plan.egress else None
            # A cgroup per sandbox (not per VM): another server process sharing this data
            # directory may run its own sandbox of the same VM, with its own lifetime.
            running.group = f"{record.vm_id}.{secrets.token_hex(4)}"
            procs = self.cgroups.prepare(running.group, self._limits(record))
            log_path = self.log_path(record.vm_id)
            sandbox = await start_sandbox(
                plan, lambda argv: Cgroups.join_command(procs, argv), log_path, slirp
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._release(running)
            raise
        running.network = sandbox.network
        if record.disk_gb and not record.workspace_disk:
            # No disk of its own: the limit is guarded instead (see storage_mode).
            running.watch = StorageWatch(
                self.workspace_dir(record.vm_id), int(record.disk_gb * GIB), sandbox.init_pid
            )
            running.watch.start()
        return _SandboxChannel(
            sandbox.process, sandbox.channel, lambda: log_tail(log_path), self, running
        )

    async def _release(self, running: _Running) -> None:
        """A sandbox has ended: undo what was set up for it (once)."""
        if running.released:
            return
        running.released = True
        if running.watch is not None:
            running.watch.stop()
        if running.network is not None:
            await running.network.aclose()
        if running.group is not None:
            await self.cgroups.release(running.group)
        if self._running.get(running.vm_id) is running:
            del self._running[running.vm_id]
            if running.disk:
                # Nothing keeps a stopped VM's disk mounted on the host.
                await anyio.to_thread.run_sync(self._disk(running.vm_id).unmount)

    # -- what this host can do ----------------------------------------------------------------

    async def storage_mode(self) -> str:
        """How ``max_storage_gb`` is kept here (for ``probe()``, doctor and get_project)."""
        if self.config.workspace_disks == "off":
            return "guard: workspace disks are off in the configuration; " + GUARD_LIMITS
        support = await anyio.to_thread.run_sync(disk_support)
        if support.usable:
            return (
                "filesystem: each workspace is an ext4 disk image of max_storage_gb, "
                "loop-mounted; a write past it fails with 'No space left on device'"
            )
        return f"guard: {support.reason}; " + GUARD_LIMITS

    async def probe(self) -> Availability:
        try:
            bwrap = self._bwrap()
            root = self.sandbox_root()
            python = root.python(self.config.python)
            self.check_usable()
        except DriverUnavailable as err:
            return Availability(driver=self.name, usable=False, reason=str(err))
        failure = await self._trial_sandbox()
        if failure is not None:
            return Availability(
                driver=self.name,
                usable=False,
                reason=f"bubblewrap cannot create a sandbox here: {failure}; unprivileged user "
                "namespaces may be disabled (sysctl kernel.unprivileged_userns_clone=1)",
            )
        version = await anyio.run_process([bwrap, "--version"], check=False)
        try:
            slirp = find_slirp4netns(self.config.slirp4netns)
            network = (
                f"egress in a network namespace of its own via {slirp} (the host's loopback "
                "is unreachable)"
            )
            if not self.identity.privileged and not os.access(TUN, os.R_OK | os.W_OK):
                network = (
                    f"egress unavailable: {TUN} is not open to uid {os.geteuid()} (slirp4netns "
                    f"needs it without root: chmod 0666 {TUN}, as most distributions ship it)"
                )
        except DriverUnavailable:
            network = f"egress unavailable: slirp4netns not found ({SLIRP_HINT})"
        return Availability(
            driver=self.name,
            usable=True,
            reason="bubblewrap sandboxes work here",
            details={
                "bwrap": f"{bwrap} ({version.stdout.decode().strip()})",
                "python": python,
                "root": root.describe(),
                "identity": self.identity.describe(),
                "network": network,
                "storage": await self.storage_mode(),
                "limits": self.cgroups.status(),
            },
        )

    async def _trial_sandbox(self) -> str | None:
        """Start a real sandbox that runs ``true`` (as the VMs' sandboxes would be made);
        None if it worked, else what went wrong."""
        scratch = self.root / "sandboxes" / f"probe-{secrets.token_hex(4)}"
        record = HostVMRecord.model_validate(
            {
                "vm_id": "pvm-probe",
                "project_id": "probe",
                "name": "probe",
                "state": "running",
                "network": "none",
                "created_at": "2020-01-01T00:00:00Z",
                "labels": {},
            }
        )
        try:
            workspace = scratch / "workspace"
            workspace.mkdir(parents=True)
            agent = scratch / "agent.pyz"
            agent.write_text("")
            plan = await anyio.to_thread.run_sync(self._plan, record, agent, scratch, workspace)
            plan.program = ["/bin/true"]
            sandbox = await start_sandbox(plan, lambda argv: argv, scratch / "log", None)
            await sandbox.channel.aclose()
            code = await sandbox.process.wait()
            return None if code == 0 else log_tail(scratch / "log")
        except (DriverError, OSError) as err:
            return str(err)
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))


GUARD_LIMITS = (
    "the workspace is measured at least every second and its writers are killed when it "
    "grows past the limit, API writes over it are refused and no command may grow a file past "
    "it; a process can overshoot by what it writes between two measurements"
)


@dataclass
class _Running:
    """What one sandbox holds until it ends."""

    vm_id: str
    disk: bool
    group: str | None = None
    network: UserModeNetwork | None = None
    watch: StorageWatch | None = None
    released: bool = False


class _SandboxChannel(ProcessSocketStream):
    """The agent's channel; closing it ends the sandbox and releases what it held."""

    def __init__(
        self,
        process: anyio.abc.Process,
        channel: anyio.abc.ByteStream,
        why: Callable[[], str],
        driver: LocalDriver,
        running: _Running,
    ) -> None:
        super().__init__(process, channel, why)
        self._driver = driver
        self._running = running

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            with anyio.CancelScope(shield=True):
                await self._driver._release(self._running)


_: type[VMDriver] = LocalDriver
