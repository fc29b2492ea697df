"""Bringing one VM up (cold boot or snapshot restore) and down again, leaving nothing behind.

:class:`Booter` owns the sequence around a :class:`~.machine.Machine`: runtime directory, disk
lock, tap, console log, staging files into a jail, spawning, the pidfile, and — whatever fails
or is cancelled on the way — the teardown that kills the VMM and removes its sockets, jail,
tap and lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio

from guest_runtime.bundle import agent_zipapp, agent_zipapp_digest
from guest_runtime.image.artifacts import (
    ArtifactsError,
    VMArtifacts,
    images_dir,
    load_vm_artifacts,
)
from guest_runtime.image.initramfs import agent_cpio, boot_payload_digest
from guest_runtime.protocol import GuestInfo
from vm_drivers.config import FirecrackerDriverConfig
from vm_drivers.errors import DriverError, DriverUnavailable, VMOperationFailed
from vm_drivers.firecracker.api import (
    VSOCK_OVERRIDE_VERSION,
    ApiObserver,
    FirecrackerAPI,
    MemoryBackend,
    SnapshotLoadParams,
    VsockOverride,
    parse_version,
)
from vm_drivers.firecracker.disks import DiskLock
from vm_drivers.firecracker.launch import Launch, find_binary, plan_launch
from vm_drivers.firecracker.machine import (
    INSTALL_HINT,
    Machine,
    MachineSettings,
    configuration_calls,
)
from vm_drivers.firecracker.network import TapPlan, create_tap, delete_tap, plan_tap
from vm_drivers.firecracker.process import (
    ConsoleLog,
    VMMPidfile,
    adopt,
    spawn,
    start_ticks,
)
from vm_drivers.firecracker.records import SnapshotRecord, fsync_dir

__all__ = [
    "BootImages",
    "BootRequest",
    "Booter",
    "RunningVM",
    "SnapshotUnusable",
    "release",
]

STATE_FILE = "vm.state"
MEMORY_FILE = "vm.mem"
IMAGES_HINT = (
    "build the VM images with `projectvm image build` (the same as qemu's), or set the "
    "firecracker driver's kernel/initramfs/rootfs options"
)


def _with_agent(artifacts: VMArtifacts, cache: Path) -> Path:
    """The image's initramfs with the current agent and init appended (kept per pair)."""
    target = cache / f"{artifacts.digest}-{boot_payload_digest(agent_zipapp_digest())}.img"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}")
        temporary.write_bytes(artifacts.initramfs.read_bytes() + agent_cpio(agent_zipapp()))
        temporary.replace(target)
    return target


class SnapshotUnusable(VMOperationFailed):
    """The snapshot cannot be loaded by this Firecracker (another version or a failed load)."""


@dataclass(frozen=True)
class BootImages:
    kernel: Path
    initramfs: Path
    rootfs: Path

    @classmethod
    def from_config(cls, config: FirecrackerDriverConfig, data_dir: Path) -> BootImages:
        """The images the config names one by one, else the shared boot artifacts of
        ``projectvm image build`` (the same kernel, initramfs and root disk as qemu's), with
        the current guest agent appended to the initramfs."""
        directory = config.images_dir or images_dir(data_dir) / "current"
        try:
            artifacts = load_vm_artifacts(directory)
        except ArtifactsError:
            artifacts = None
        if artifacts is None or config.initramfs is not None:
            initramfs = config.initramfs or directory / "initramfs.cpio.gz"
        else:
            initramfs = _with_agent(artifacts, data_dir / "firecracker" / "initrd")
        return cls(
            kernel=config.kernel
            or (artifacts.kernel_vmlinux if artifacts else directory / "vmlinux"),
            initramfs=initramfs,
            rootfs=config.rootfs or (artifacts.rootfs if artifacts else directory / "rootfs.ext4"),
        )

    def missing(self) -> list[str]:
        return [
            f"{name} {path}"
            for name, path in (
                ("kernel", self.kernel),
                ("initramfs", self.initramfs),
                ("rootfs", self.rootfs),
            )
            if not path.is_file()
        ]

    def check(self) -> None:
        missing = self.missing()
        if missing:
            raise DriverUnavailable(
                "firecracker", "boot images are missing: " + ", ".join(missing), IMAGES_HINT
            )


@dataclass(frozen=True)
class BootRequest:
    """One VM to bring up."""

    vm_id: str
    key: str
    labels: dict[str, str]
    vcpus: int
    memory_mb: int
    egress: bool
    disk: Path
    console: ConsoleLog


@dataclass
class RunningVM:
    """A VM we started or adopted, and everything to release when it goes."""

    machine: Machine
    launch: Launch
    # Held by the server only under the jailer (which closes inherited descriptors);
    # otherwise the VMM holds the lock itself.
    lock: DiskLock | None = None
    tap: str | None = None
    info: GuestInfo | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class Booter:
    """Starts and stops VMMs the way one driver configuration says."""

    def __init__(
        self,
        config: FirecrackerDriverConfig,
        *,
        images: BootImages,
        runtime_base: Path,
        observer: ApiObserver | None = None,
    ) -> None:
        self.config = config
        self.images = images
        self.runtime_base = runtime_base
        self.observer = observer

    def binary(self) -> str:
        """The firecracker executable as an absolute path (the jailer needs one)."""
        found = find_binary(self.config.binary)
        if found is None:
            raise DriverUnavailable(
                "firecracker", f"{self.config.binary!r} was not found on PATH", INSTALL_HINT
            )
        return found

    def launch_for(self, key: str) -> Launch:
        """How this VM's VMM is started (checks the binary and the jailer are there)."""
        return plan_launch(self.binary(), f"pvm-{key}", self.runtime_base, self.config.jailer)

    def paths_for(self, key: str) -> Launch:
        """Where this VM's VMM keeps its files, whether or not it can be started here."""
        return plan_launch(
            self.config.binary, f"pvm-{key}", self.runtime_base, self.config.jailer, check=False
        )

    # -- up -----------------------------------------------------------------------------------

    async def cold_boot(
        self, request: BootRequest, *, boot_timeout_s: float | None = None
    ) -> RunningVM:
        """Spawn, configure, InstanceStart, and wait for the agent's hello."""
        self.images.check()
        running = await self.start_vmm(request)
        try:
            await self.configure(request, running)
            await running.machine.start_instance()
            running.info = await running.machine.wait_for_hello(
                self.config.agent_port, boot_timeout_s or self.config.boot_timeout_s
            )
        except BaseException:
            await self.teardown(running)
            raise
        return running

    async def resume(
        self, request: BootRequest, snapshot: SnapshotRecord, directory: Path
    ) -> RunningVM:
        """A fresh VMM loads the snapshot, resumes it, and the agent says hello again."""
        running = await self.start_vmm(request)
        launch = running.launch
        machine = running.machine
        try:
            if machine.version != snapshot.firecracker_version:
                raise SnapshotUnusable(
                    f"the snapshot was made by Firecracker {snapshot.firecracker_version}, this "
                    f"is {machine.version}"
                )
            state = launch.stage(directory / STATE_FILE, STATE_FILE)
            memory = launch.stage(directory / MEMORY_FILE, MEMORY_FILE)
            if launch.jailed:
                # The snapshot names the disks by their paths in the jail it was made in.
                launch.stage(self.images.rootfs, "rootfs.ext4")
                launch.stage(request.disk, "data.ext4", writable=True)
            override = None
            if parse_version(machine.version) >= VSOCK_OVERRIDE_VERSION:
                override = VsockOverride(uds_path=launch.paths.api_view(launch.paths.vsock_socket))
            await machine.load_snapshot(
                SnapshotLoadParams(
                    snapshot_path=state,
                    mem_backend=MemoryBackend(backend_type="File", backend_path=memory),
                    resume_vm=True,
                    vsock_override=override,
                )
            )
            # The restore reset every vsock connection; the agent's listener survives it.
            running.info = await machine.wait_for_hello(
                self.config.agent_port, self.config.boot_timeout_s
            )
        except BaseException:
            await self.teardown(running)
            raise
        return running

    async def configure(self, request: BootRequest, running: RunningVM) -> None:
        """The pre-boot configuration of a fresh VMM, checked with ``GET /vm/config``."""
        await running.machine.configure(configuration_calls(self._settings(request, running)))

    def _settings(self, request: BootRequest, running: RunningVM) -> MachineSettings:
        launch = running.launch
        paths = launch.paths
        tap = plan_tap(request.key, self.config.egress_subnet) if running.tap is not None else None
        return MachineSettings(
            vcpus=request.vcpus,
            memory_mb=request.memory_mb,
            kernel=launch.stage(self.images.kernel, "vmlinux"),
            initramfs=launch.stage(self.images.initramfs, "initramfs"),
            rootfs=launch.stage(self.images.rootfs, "rootfs.ext4"),
            data_disk=launch.stage(request.disk, "data.ext4", writable=True),
            vsock_socket=paths.api_view(paths.vsock_socket),
            log_path=paths.api_view(paths.vmm_log),
            log_level=self.config.log_level,
            metrics_path=paths.api_view(paths.metrics) if self.config.metrics else None,
            agent_port=self.config.agent_port,
            tap=tap,
            extra_boot_args=self.config.extra_boot_args,
        )

    async def start_vmm(self, request: BootRequest) -> RunningVM:
        """Runtime directory, lock, tap, spawn, pidfile, API socket and version check."""
        launch = self.launch_for(request.key)
        paths = launch.paths
        paths.check_lengths([self.config.agent_port])
        if launch.jailed:
            launch.remove()  # a jail left by a killed run
        paths.prepare()
        lock = DiskLock.acquire(request.disk)
        tap: TapPlan | None = None
        try:
            if request.egress:
                tap = plan_tap(request.key, self.config.egress_subnet)
                await create_tap(tap, request.labels)
            request.console.start_fresh()
            launch.make_owned_file(paths.vmm_log)
            if self.config.metrics:
                launch.make_owned_file(paths.metrics)
            # Without the jailer the VMM inherits the locked descriptor and holds the lock for
            # as long as it runs, also when this server restarts.
            inherited = () if launch.jailed else (lock.fd,)
            try:
                process = await spawn(launch.argv, console=request.console, pass_fds=inherited)
            except VMOperationFailed as err:
                raise DriverUnavailable("firecracker", str(err), INSTALL_HINT) from err
            try:
                VMMPidfile(
                    pid=process.pid,
                    start_ticks=start_ticks(process.pid) or 0,
                    vm_id=request.vm_id,
                    key=request.key,
                    labels=request.labels,
                    started_at=datetime.now(UTC),
                    jailed=launch.jailed,
                ).write(paths.pidfile)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await process.kill()
                    process.close()
                raise
            # Kills the VMM itself when the socket never appears or the version is too old.
            machine = await Machine.attach(
                process,
                paths,
                request.console,
                api_timeout_s=self.config.api_timeout_s,
                observer=self.observer,
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                launch.remove()
                if tap is not None:
                    await _quietly_delete_tap(tap.name)
                lock.release()
            raise
        if not launch.jailed:
            lock.release()  # our copy only: the VMM's inherited one keeps the lock
        return RunningVM(
            machine=machine,
            launch=launch,
            lock=lock if launch.jailed else None,
            tap=tap.name if tap is not None else None,
        )

    def adopt(self, key: str, vm_id: str) -> RunningVM | None:
        """The VMM an earlier server started for this VM, if it still runs."""
        launch = self.paths_for(key)
        found = adopt(launch.paths.pidfile)
        if found is None:
            return None
        process, pidfile = found
        if pidfile.vm_id != vm_id:
            process.close()
            return None
        api = FirecrackerAPI(
            launch.paths.api_socket, timeout_s=self.config.api_timeout_s, observer=self.observer
        )
        machine = Machine(paths=launch.paths, process=process, api=api, console=None, version="")
        return RunningVM(machine=machine, launch=launch, tap=self._tap_name(key, launch))

    def _tap_name(self, key: str, launch: Launch) -> str | None:
        name = plan_tap(key, self.config.egress_subnet).name
        return name if Path(f"/sys/class/net/{name}").exists() else None

    # -- snapshot -----------------------------------------------------------------------------

    async def snapshot(self, running: RunningVM, directory: Path) -> SnapshotRecord:
        """Pause and snapshot into ``directory`` (fsynced, read-only); the VM stays paused."""
        machine = running.machine
        if not machine.version:
            machine.version = (await machine.api.version()).firecracker_version
        launch = running.launch
        inside = launch.paths.root if launch.jailed else directory
        await machine.snapshot(inside / STATE_FILE, inside / MEMORY_FILE)

        def persist() -> None:
            for name in (STATE_FILE, MEMORY_FILE):
                if launch.jailed:
                    shutil.move(inside / name, directory / name)
                target = directory / name
                with target.open("rb+") as handle:
                    os.fsync(handle.fileno())
                target.chmod(0o400)  # nothing may change it while a VM maps it
            fsync_dir(directory)

        await anyio.to_thread.run_sync(persist)
        return SnapshotRecord(
            firecracker_version=machine.version,
            created_at=datetime.now(UTC),
            shape={},
        )

    # -- down ---------------------------------------------------------------------------------

    async def stop(self, running: RunningVM) -> str:
        """Graceful stop (agent, Ctrl-Alt-Del, SIGKILL), then teardown; how it ended."""
        try:
            how = await running.machine.shutdown(
                port=self.config.agent_port, grace_s=self.config.stop_timeout_s
            )
        finally:
            await self.teardown(running)
        return how

    async def teardown(self, running: RunningVM) -> None:
        await release(running)


async def release(running: RunningVM) -> None:
    """Kill the VMM if alive; remove its sockets, runtime directory or jail, tap, lock."""
    with anyio.CancelScope(shield=True):
        await running.machine.kill()
        running.launch.remove()
        if running.tap is not None:
            await _quietly_delete_tap(running.tap)
        if running.lock is not None:
            running.lock.release()


async def _quietly_delete_tap(name: str) -> None:
    with contextlib.suppress(DriverError, OSError):
        await delete_tap(name)
