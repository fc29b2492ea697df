"""The ``firecracker`` driver: each project VM is a Firecracker microVM with its own data disk.

- create: a sparse ext4 data disk (``spec.disk_gb``) and a record, then a boot.
- start: spawn Firecracker, configure it over its API socket (machine, kernel + initramfs, the
  shared read-only rootfs, the data disk, vsock, entropy, a tap only when the project allows
  egress), InstanceStart, and wait — bounded — for the guest agent's hello over vsock.
- stop: the agent's ``system.shutdown``, then Ctrl-Alt-Del, then SIGKILL; the disk stays.
- suspend/resume: sleep with memory — a full snapshot to disk, the VMM ends; a fresh VMM loads
  it and resumes. ``start`` resumes a suspended VM by itself.
- channel: a fresh vsock connection (``CONNECT <port>``) to the agent; a new one closes the
  previous one, which ends that session's commands in the guest.

VMMs run in their own session and survive a server restart; the next server adopts them from
their pidfiles (the serial console of an adopted VMM is no longer captured).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import anyio
import anyio.abc

from vm_drivers.base import (
    LABEL_INSTANCE,
    LABEL_PROJECT,
    Availability,
    DriverContext,
    VMCreationResult,
    VMDriver,
    VMInfo,
    VMSpec,
    VMStatus,
)
from vm_drivers.config import FirecrackerDriverConfig
from vm_drivers.errors import (
    DriverError,
    DriverUnavailable,
    GuestUnreachable,
    VMCreationFailed,
    VMNotFound,
    VMOperationFailed,
)
from vm_drivers.firecracker.api import ApiObserver
from vm_drivers.firecracker.boot import Booter, BootImages, BootRequest, RunningVM, release
from vm_drivers.firecracker.disks import create_data_disk
from vm_drivers.firecracker.network import egress_unavailable_reason
from vm_drivers.firecracker.probe import Prober
from vm_drivers.firecracker.process import ConsoleLog, VMMPidfile, adopt
from vm_drivers.firecracker.records import RecordStore, VMRecord, fsync_dir, runtime_key
from vm_drivers.firecracker.vsock import connect_vsock
from vm_drivers.kit.lifecycle import ClosingDriver

__all__ = ["FirecrackerDriver"]

log = logging.getLogger("projectvm.firecracker")

CHANNEL_CONNECT_S = 10.0
GIB = 1024**3


def default_runtime_base() -> Path:
    """A short directory for sockets: /run as root, else the user's runtime dir, else /tmp."""
    if os.geteuid() == 0:
        return Path("/run/projectvm-fc")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "projectvm-fc"
    return Path(f"/tmp/projectvm-fc-{os.geteuid()}")


class _Channel(anyio.abc.ByteStream):
    """A vsock stream to the agent; closing it lets the driver forget it."""

    def __init__(self, stream: anyio.abc.ByteStream, on_close: list[_Channel]) -> None:
        self._stream = stream
        self._registry = on_close
        on_close.append(self)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self._stream.send(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        with contextlib.suppress(ValueError):
            self._registry.remove(self)
        await self._stream.aclose()


class FirecrackerDriver(ClosingDriver):
    name: ClassVar[str] = "firecracker"

    def __init__(
        self,
        config: FirecrackerDriverConfig,
        context: DriverContext,
        *,
        api_observer: ApiObserver | None = None,
    ) -> None:
        """``api_observer`` sees every API request and answer (for diagnostics and tests)."""
        self.config = config
        self.context = context
        self.root = context.data_dir / "firecracker"
        self.records = RecordStore(self.root)
        self.images = BootImages.from_config(config, context.data_dir)
        self.runtime_base = config.runtime_dir or default_runtime_base()
        self.booter = Booter(
            config, images=self.images, runtime_base=self.runtime_base, observer=api_observer
        )
        self._running: dict[str, RunningVM] = {}
        self._channels: dict[str, list[_Channel]] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self.prober = Prober(self)

    # -- plumbing -----------------------------------------------------------------------------

    def _lock(self, vm_id: str) -> anyio.Lock:
        return self._locks.setdefault(vm_id, anyio.Lock())

    def _console(self, vm_id: str) -> ConsoleLog:
        return ConsoleLog(self.records.console_path(vm_id), self.config.console_log_bytes)

    def _request(self, record: VMRecord) -> BootRequest:
        spec = record.spec
        vcpus = math.ceil(spec.cpus) if spec.cpus else self.config.vcpus
        if vcpus > 1 and vcpus % 2:
            vcpus += 1  # Firecracker takes 1 or an even number
        return BootRequest(
            vm_id=record.vm_id,
            key=record.key,
            labels=record.labels,
            vcpus=min(vcpus, 32),
            memory_mb=spec.memory_mb or self.config.memory_mb,
            egress=spec.network == "egress",
            disk=self.records.disk_path(record.vm_id),
            console=self._console(record.vm_id),
        )

    async def _current(self, record: VMRecord) -> RunningVM | None:
        """The VM's live VMM (ours or adopted from a pidfile), reaping one that ended."""
        running = self._running.get(record.vm_id)
        if running is None:
            running = self.booter.adopt(record.key, record.vm_id)
            if running is None:
                return None
            self._running[record.vm_id] = running
        if running.machine.process.running():
            return running
        await self._forget(record.vm_id, ended=True)
        return None

    @contextlib.asynccontextmanager
    async def _peek(self, record: VMRecord) -> AsyncIterator[RunningVM | None]:
        """The VM's live VMM for a look only (status, inventory): changes nothing we hold."""
        running = self._running.get(record.vm_id)
        if running is not None:
            yield running if running.machine.process.running() else None
            return
        adopted = self.booter.adopt(record.key, record.vm_id)
        try:
            yield adopted
        finally:
            if adopted is not None:
                await adopted.machine.close()

    async def _forget(self, vm_id: str, *, ended: bool = False) -> None:
        """Close the channels; tear the VMM down (when ``ended`` it already exited)."""
        for channel in list(self._channels.pop(vm_id, [])):
            with anyio.CancelScope(shield=True):
                await channel.aclose()
        running = self._running.pop(vm_id, None)
        if running is not None:
            if ended:
                log.info("VM %s ended by itself: %s", vm_id, running.machine.process.exit_code)
            await release(running)

    def _drop_snapshot(self, vm_id: str) -> None:
        shutil.rmtree(self.records.snapshot_dir(vm_id), ignore_errors=True)

    # -- VMDriver -----------------------------------------------------------------------------

    async def create_project_vm(self, spec: VMSpec) -> VMCreationResult:
        vm_id = f"pvm-{spec.project_id}"
        self.booter.binary()
        self.images.check()
        if spec.network == "egress" and (reason := egress_unavailable_reason()) is not None:
            raise DriverUnavailable(
                self.name,
                f"the project allows egress, but {reason}",
                "run the server as root with iproute2, or create the project without egress",
            )
        async with self._lock(vm_id):
            if self.records.exists(vm_id):
                raise VMCreationFailed(f"VM {vm_id} already exists; destroy it first or start it")
            record = VMRecord(
                vm_id=vm_id,
                project_id=spec.project_id,
                name=spec.name,
                key=runtime_key(self.context.instance_id, vm_id),
                state="stopped",
                spec=spec,
                created_at=datetime.now(UTC),
                labels={**spec.labels, **self.context.labels(spec.project_id, vm_id)},
                disk_bytes=int((spec.disk_gb or self.config.disk_gb) * GIB),
            )
            try:
                self.records.vm_dir(vm_id).mkdir(parents=True, exist_ok=True)
                self.records.save(record)
                await create_data_disk(self.records.disk_path(vm_id), record.disk_bytes)
                self._running[vm_id] = await self.booter.cold_boot(self._request(record))
                self.records.save(record.model_copy(update={"state": "running"}))
            except BaseException as err:
                with anyio.CancelScope(shield=True):
                    await self._forget(vm_id)
                    self.records.remove(vm_id)
                if isinstance(err, DriverUnavailable | VMCreationFailed):
                    raise
                if isinstance(err, DriverError | OSError):
                    raise VMCreationFailed(f"could not create VM {vm_id}: {err}") from err
                raise
        return VMCreationResult(
            vm_id=vm_id,
            status=VMStatus.RUNNING,
            workspace_path=str(self.records.disk_path(vm_id)),
            details={"firecracker": self._running[vm_id].machine.version},
        )

    async def start_project_vm(self, vm_id: str, spec: VMSpec | None = None) -> None:
        async with self._lock(vm_id):
            record = self.records.load(vm_id)
            if spec is not None and spec.shape() != record.spec.shape():
                # Resources or network changed: a snapshot of the old shape cannot be resumed.
                self._drop_snapshot(vm_id)
                record = record.model_copy(update={"spec": spec, "snapshot": None})
                if record.state == "suspended":
                    record = record.model_copy(update={"state": "stopped"})
                self.records.save(record)
            running = await self._current(record)
            if running is not None and record.state == "suspended":
                # A VMM left between its snapshot and its end (a crash): the snapshot wins.
                await self._forget(vm_id)
            elif running is not None:
                if record.state != "running":  # a crash between spawn and saving the state
                    self.records.save(record.model_copy(update={"state": "running"}))
                return
            request = self._request(record)
            if record.state == "suspended" and record.snapshot is not None:
                try:
                    self._running[vm_id] = await self.booter.resume(
                        request, record.snapshot, self.records.snapshot_dir(vm_id)
                    )
                except DriverUnavailable:
                    raise
                except (DriverError, OSError) as err:
                    self._drop_snapshot(vm_id)
                    self.records.save(
                        record.model_copy(update={"state": "stopped", "snapshot": None})
                    )
                    raise VMOperationFailed(
                        f"VM {vm_id} could not resume from its memory snapshot ({err}); the "
                        "snapshot was discarded: start the project again for a fresh boot "
                        "(files written through ProjectVM are on its disk)"
                    ) from err
                self.records.save(record.model_copy(update={"state": "running"}))
                return
            # A snapshot left by a VM that ended on its own is of no use any more.
            self._drop_snapshot(vm_id)
            self._running[vm_id] = await self.booter.cold_boot(request)
            self.records.save(record.model_copy(update={"state": "running", "snapshot": None}))

    async def stop_project_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            record = self.records.load(vm_id)
            running = await self._current(record)
            for channel in list(self._channels.pop(vm_id, [])):
                await channel.aclose()
            if running is not None:
                self._running.pop(vm_id, None)
                how = await self.booter.stop(running)
                log.info("stopped %s: %s", vm_id, how)
            if record.state == "suspended":
                return  # asleep with its memory: stays so until started or destroyed
            self._drop_snapshot(vm_id)
            if record.state != "stopped" or record.snapshot is not None:
                self.records.save(record.model_copy(update={"state": "stopped", "snapshot": None}))

    async def destroy_project_vm(self, vm_id: str) -> None:
        try:
            self.records.vm_dir(vm_id)
        except VMNotFound:
            return  # not an id this driver could have made: nothing to destroy
        async with self._lock(vm_id):
            record = None
            with contextlib.suppress(VMNotFound, VMOperationFailed):
                record = self.records.load(vm_id)
            if record is not None:
                await self._current(record)
            await self._forget(vm_id)
            await self._kill_stray_vmm(vm_id)
            await anyio.to_thread.run_sync(self.records.remove, vm_id)
            if self.records.vm_dir(vm_id).exists():
                raise VMOperationFailed(
                    f"could not remove {self.records.vm_dir(vm_id)}; check its permissions"
                )
        self._locks.pop(vm_id, None)

    async def _kill_stray_vmm(self, vm_id: str) -> None:
        """A VMM whose record is gone (a crash mid-create) still holds sockets: end it."""
        running = self.booter.adopt(runtime_key(self.context.instance_id, vm_id), vm_id)
        if running is not None:
            await release(running)

    async def get_vm_status(self, vm_id: str) -> VMStatus:
        """Process alive and ``GET /`` says Running; never waits for an operation under way."""
        record = self.records.load(vm_id)
        if self._lock(vm_id).locked():
            return VMStatus.CREATING if record.state != "running" else VMStatus.RUNNING
        async with self._peek(record) as running:
            if running is None:
                if record.state == "running":  # it ended by itself: say so from now on
                    self.records.save(record.model_copy(update={"state": "stopped"}))
                return VMStatus.STOPPED
            try:
                info = await running.machine.api.describe()
            except DriverError:
                return VMStatus.FAILED
        return VMStatus.RUNNING if info.state == "Running" else VMStatus.STOPPED

    async def get_vm_url(self, vm_id: str) -> str | None:
        self.records.load(vm_id)
        return None

    async def open_channel(self, vm_id: str) -> anyio.abc.ByteStream:
        async with self._lock(vm_id):
            record = self.records.load(vm_id)
            running = await self._current(record)
            if running is None:
                state = "asleep with its memory" if record.state == "suspended" else "stopped"
                raise GuestUnreachable(f"VM {vm_id} is {state}; start it first")
            # One channel per VM: the previous one is closed, ending its session's commands.
            for channel in list(self._channels.pop(vm_id, [])):
                await channel.aclose()
            process = running.machine.process
            stream = await connect_vsock(
                running.launch.paths.vsock_socket,
                self.config.agent_port,
                deadline_s=CHANNEL_CONNECT_S,
                still_running=lambda: None if process.running() else "the VMM exited",
            )
            return _Channel(stream, self._channels.setdefault(vm_id, []))

    async def list_vms(self) -> list[VMInfo]:
        found: dict[str, VMInfo] = {}
        for vm_id in self.records.vm_ids():
            try:
                record = self.records.load(vm_id)
            except DriverError:
                project_id = vm_id.removeprefix("pvm-")
                found[vm_id] = VMInfo(
                    vm_id=vm_id,
                    project_id=project_id,
                    status=VMStatus.STOPPED,
                    driver=self.name,
                    labels=self.context.labels(project_id, vm_id),
                    detail=f"{self.records.vm_dir(vm_id)} (data without a usable VM record)",
                )
                continue
            async with self._peek(record) as running:
                alive = running is not None
            detail = str(self.records.disk_path(vm_id))
            if record.state == "suspended":
                detail += " (asleep with a memory snapshot)"
            found[vm_id] = VMInfo(
                vm_id=vm_id,
                project_id=record.project_id,
                status=VMStatus.RUNNING if alive else VMStatus.STOPPED,
                driver=self.name,
                created_at=record.created_at,
                labels=record.labels,
                detail=detail,
            )
        for pidfile in self._stray_pidfiles(set(found)):
            found[pidfile.vm_id] = VMInfo(
                vm_id=pidfile.vm_id,
                project_id=pidfile.labels.get(LABEL_PROJECT),
                status=VMStatus.RUNNING,
                driver=self.name,
                created_at=pidfile.started_at,
                labels=pidfile.labels,
                detail=f"Firecracker pid {pidfile.pid} without a VM record",
            )
        return sorted(found.values(), key=lambda info: info.vm_id)

    def _stray_pidfiles(self, known: set[str]) -> list[VMMPidfile]:
        """VMMs of this installation whose VM record is gone."""
        strays = []
        if self.config.jailer is None:
            pattern, base = "pvm-*/vmm.json", self.runtime_base
        else:
            pattern, base = "*/pvm-*/root/vmm.json", self.config.jailer.chroot_base_dir
        if base.is_dir():
            for pidfile_path in base.glob(pattern):
                found = adopt(pidfile_path)  # only a VMM that still runs
                if found is None:
                    continue
                process, pidfile = found
                process.close()
                if (
                    pidfile.vm_id not in known
                    and pidfile.labels.get(LABEL_INSTANCE) == self.context.instance_id
                ):
                    strays.append(pidfile)
        return strays

    async def storage_mode(self) -> str:
        """How ``max_storage_gb`` is kept by this driver (shown by get_project)."""
        return (
            "filesystem: the workspace is the VM's own ext4 disk of max_storage_gb; "
            "a write past it fails with 'No space left on device'"
        )

    async def probe(self) -> Availability:
        return await self.prober.probe()

    # -- sleep with memory --------------------------------------------------------------------

    async def suspend_project_vm(self, vm_id: str) -> None:
        """Pause, write a full snapshot (fsynced, read-only), end the VMM; ``start`` resumes."""
        async with self._lock(vm_id):
            record = self.records.load(vm_id)
            running = await self._current(record)
            if running is None:
                raise VMOperationFailed(
                    f"VM {vm_id} is not running; only a running VM can sleep: start it first"
                )
            for channel in list(self._channels.pop(vm_id, [])):
                await channel.aclose()
            fresh = self.records.vm_dir(vm_id) / "snapshot.new"
            shutil.rmtree(fresh, ignore_errors=True)
            fresh.mkdir()
            try:
                snapshot = await self.booter.snapshot(running, fresh)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    shutil.rmtree(fresh, ignore_errors=True)
                    # A paused VM is of no use to anyone: resume it, the caller sees the error.
                    with contextlib.suppress(DriverError):
                        await running.machine.api.set_state("Resumed")
                raise
            self._running.pop(vm_id, None)
            await release(running)
            # Only now, with the VM that mapped it gone, may an older snapshot go.
            self._drop_snapshot(vm_id)
            fresh.rename(self.records.snapshot_dir(vm_id))
            fsync_dir(self.records.vm_dir(vm_id))
            snapshot = snapshot.model_copy(update={"shape": record.spec.shape()})
            self.records.save(
                record.model_copy(update={"state": "suspended", "snapshot": snapshot})
            )

    def suspended_bytes(self, vm_id: str) -> int:
        directory = self.records.snapshot_dir(vm_id)
        if not directory.is_dir():
            return 0
        return sum(path.stat().st_blocks * 512 for path in directory.iterdir() if path.is_file())

    async def resume_project_vm(self, vm_id: str) -> None:
        """Resume a suspended VM from its snapshot (a fresh VMM), or boot a stopped one."""
        await self.start_project_vm(vm_id)

    async def aclose(self) -> None:
        """Close channels and API clients; the VMs keep running (a next server adopts them)."""
        for vm_id in list(self._channels):
            for channel in list(self._channels.pop(vm_id, [])):
                await channel.aclose()
        for running in self._running.values():
            await running.machine.close()
        self._running.clear()


_: type[VMDriver] = FirecrackerDriver
