"""The ``qemu`` driver: each project VM is a QEMU ``microvm`` booting the ProjectVM image.

A VM is the shared read-only root disk, the project's own ext4 data disk (its ``/workspace``,
sized by ``spec.disk_gb``, so the storage limit is a filesystem limit), Debian's cloud kernel
and an initramfs carrying the current guest agent, which serves on a virtio-serial port bound
to a unix socket. QEMU runs detached; its pidfile and QMP socket let any later driver instance
find, inspect, adopt or stop it. State lives in ``DATA_DIR/qemu/vms/<vm_id>/`` (record, data
disk, logs, suspend state); sockets and the pidfile in a short runtime directory.

Stopping asks the agent to shut the VM down (sync, unmount, reset), so nothing the guest wrote
is lost; only a VM that does not go in time is quit, terminated, then killed. Suspending saves
the whole machine (memory included) to a file through QMP migration and resuming boots QEMU
from it, so processes in the VM carry on where they were.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
import anyio.abc
from pydantic import BaseModel

from guest_runtime.bundle import agent_zipapp, agent_zipapp_digest
from guest_runtime.image.artifacts import ArtifactsError, VMArtifacts, load_vm_artifacts
from guest_runtime.image.disk import DiskError, grow_data_disk, make_data_disk
from guest_runtime.image.initramfs import agent_cpio
from vm_drivers.base import (
    Availability,
    DriverContext,
    VMCreationResult,
    VMDriver,
    VMInfo,
    VMSpec,
    VMStatus,
)
from vm_drivers.config import QemuDriverConfig, QemuTemplate
from vm_drivers.errors import (
    DriverError,
    DriverUnavailable,
    GuestUnreachable,
    VMCreationFailed,
    VMNotFound,
    VMOperationFailed,
)
from vm_drivers.kit.channels import ChannelSlots
from vm_drivers.kit.lifecycle import ClosingDriver
from vm_drivers.kit.locks import KeyedLocks
from vm_drivers.kit.naming import check_vm_id, vm_id_for
from vm_drivers.kit.records import RecordStore
from vm_drivers.qemu.accel import AccelChoice, choose_accel, tsc_khz
from vm_drivers.qemu.channel import open_agent_channel
from vm_drivers.qemu.process import kill, pid_from_pidfile, process_alive, spawn, wait_exit
from vm_drivers.qemu.qmp import QMPClient

__all__ = ["QemuDriver"]

INSTALL_HINT = "install QEMU (Debian/Ubuntu: apt-get install qemu-system-x86)"
IMAGE_HINT = "build the VM image with `projectvm image build` or set the qemu driver's images"
AGENT_PORT = "org.projectvm.agent"
SUN_PATH_MAX = 107
QMP_TIMEOUT_S = 10.0
QMP_APPEAR_S = 10.0
CHANNEL_TIMEOUT_S = 30.0
SUSPEND_TIMEOUT_S = 300.0
KILL_WAIT_S = 5.0
TCG_TB_MIB = 64
RUNNING_STATES = {"running"}
STARTING_STATES = {"inmigrate", "prelaunch", "restore-vm", "finish-migrate"}
FAILED_STATES = {"guest-panicked", "internal-error", "io-error", "shutdown", "watchdog"}


class _VMRecord(BaseModel):
    vm_id: str
    project_id: str
    name: str
    created_at: datetime
    labels: dict[str, str]
    spec: VMSpec
    # What the VM should be: "suspended" means its memory waits in the suspend state file.
    state: Literal["running", "stopped", "suspended"]


class QemuDriver(ClosingDriver):
    name: ClassVar[str] = "qemu"

    def __init__(self, config: QemuDriverConfig, context: DriverContext) -> None:
        self.config = config
        self.context = context
        self.root = context.data_dir / "qemu"
        self.records = RecordStore(
            self.root / "vms", _VMRecord, lambda r: r.vm_id, layout="{vm_id}/record.json"
        )
        self._channels = ChannelSlots()
        self._locks = KeyedLocks()
        self._accel: AccelChoice | None = None

    # -- where things live ----------------------------------------------------------------

    def vm_dir(self, vm_id: str) -> Path:
        check_vm_id(vm_id)
        return self.root / "vms" / vm_id

    def data_disk(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "data.ext4"

    def _console(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "console.log"

    def _qemu_log(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "qemu.log"

    def suspend_file(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "suspend.state"

    def _runtime_root(self) -> Path:
        if self.config.runtime_dir is not None:
            return self.config.runtime_dir
        if os.geteuid() == 0:
            return Path("/run/projectvm")
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        return Path(xdg) / "projectvm" if xdg else Path(f"/tmp/projectvm-{os.getuid()}")

    def runtime_dir(self, vm_id: str) -> Path:
        """Sockets and pidfile: a short path (unix sockets take at most 107 bytes)."""
        key = hashlib.sha256(f"{self.context.instance_id}/{vm_id}".encode()).hexdigest()[:12]
        return self._runtime_root() / key

    # -- records and locks ----------------------------------------------------------------

    def _load(self, vm_id: str) -> _VMRecord:
        return self.records.load(vm_id)

    def _save(self, record: _VMRecord) -> None:
        self.records.save(record)

    def _set_state(self, record: _VMRecord, state: str) -> _VMRecord:
        updated = record.model_copy(update={"state": state})
        if updated != record:
            self._save(updated)
        return updated

    @asynccontextmanager
    async def _exclusive(self, vm_id: str) -> AsyncIterator[None]:
        """One lifecycle operation at a time per VM: in this process and across processes."""
        async with self._locks(vm_id):
            with self._file_lock(vm_id):
                yield

    @contextmanager
    def _file_lock(self, vm_id: str) -> Iterator[None]:
        directory = self.vm_dir(vm_id)
        if not directory.is_dir():
            yield
            return
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise VMOperationFailed(
                    f"another ProjectVM process is starting, stopping or changing VM {vm_id}; "
                    "retry when it is done"
                ) from None
            yield
        finally:
            os.close(fd)

    def _pid(self, vm_id: str) -> int | None:
        """The QEMU running VM ``vm_id``, if one does."""
        return pid_from_pidfile(self.runtime_dir(vm_id) / "qemu.pid", vm_id)

    # -- what QEMU needs --------------------------------------------------------------------

    def _qemu_binary(self) -> str:
        found = shutil.which(self.config.qemu)
        if found is None:
            raise DriverUnavailable("qemu", f"{self.config.qemu!r} was not found", INSTALL_HINT)
        return found

    def artifacts(self) -> VMArtifacts:
        directory = self.config.images or self.context.data_dir / "images" / "current"
        try:
            return load_vm_artifacts(directory)
        except ArtifactsError as err:
            raise DriverUnavailable("qemu", str(err), IMAGE_HINT) from err

    async def accel(self) -> AccelChoice:
        if self._accel is None:
            artifacts = self.artifacts()
            self._accel = await choose_accel(
                self.config.accel,
                self._qemu_binary(),
                artifacts.kernel_bzimage,
                artifacts.initramfs,
                artifacts.directory,
                self.config.kvm_probe_timeout_s,
            )
        return self._accel

    async def _initrd(self, artifacts: VMArtifacts) -> Path:
        """The image's initramfs with the current agent appended (cached per agent version)."""
        target = self.root / "initrd" / f"{artifacts.digest}-{agent_zipapp_digest()}.img"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            data = artifacts.initramfs.read_bytes() + agent_cpio(agent_zipapp())
            temporary = target.with_name(f".{target.name}.{os.getpid()}")
            temporary.write_bytes(data)
            temporary.replace(target)
        return target

    def template(self, project_type: str) -> QemuTemplate:
        templates = self.config.templates
        return templates.get(project_type) or templates["development"]

    def _cmdline(self, spec: VMSpec, accel: AccelChoice, extra: str = "") -> str:
        parts = [
            "console=ttyS0",
            "reboot=t",
            "panic=-1",
            "quiet",
            "pvm.channel=virtio-serial",
            f"pvm.hostname=pvm-{spec.project_id[-12:]}",
        ]
        if accel.accel == "tcg":
            khz = tsc_khz()
            if khz:  # without it the TSC calibration of an emulated microvm can hang the boot
                parts.append(f"tsc_early_khz={khz}")
        if spec.network == "egress":
            parts.append("pvm.net=user")
        extras = [arg for arg in (self.config.extra_kernel_args, extra) if arg]
        return " ".join(parts + extras)

    def qemu_argv(
        self,
        record: _VMRecord,
        artifacts: VMArtifacts,
        initrd: Path,
        accel: AccelChoice,
        *,
        incoming_fd: int | None = None,
        extra_cmdline: str = "",
    ) -> list[str]:
        spec = record.spec
        template = self.template(spec.project_type)
        cpus = math.ceil(spec.cpus) if spec.cpus else template.cpus
        memory_mb = spec.memory_mb or template.memory_mb
        run = self.runtime_dir(record.vm_id)
        machine = "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=on"
        argv = [
            self._qemu_binary(),
            "-name",
            record.vm_id,
            "-M",
            machine,
            "-accel",
            # TCG's translation cache defaults to 1 GiB of address space, most of it touched
            # over time: a smaller one keeps an idle VM's host memory near its guest's.
            f"tcg,tb-size={TCG_TB_MIB}" if accel.accel == "tcg" else accel.accel,
            *(["-cpu", "host"] if accel.accel == "kvm" else []),
            "-smp",
            str(cpus),
            "-m",
            str(memory_mb),
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-action",
            "panic=exit-failure",
            "-pidfile",
            str(run / "qemu.pid"),
            "-chardev",
            f"file,id=console,path={self._console(record.vm_id)},append=on",
            "-serial",
            "chardev:console",
            "-kernel",
            str(artifacts.kernel_bzimage),
            "-initrd",
            str(initrd),
            "-append",
            self._cmdline(spec, accel, extra_cmdline),
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-device,rng=rng0",
            "-drive",
            f"id=root,file={artifacts.rootfs},format=raw,if=none,readonly=on",
            "-device",
            "virtio-blk-device,drive=root",
            "-drive",
            f"id=data,file={self.data_disk(record.vm_id)},format=raw,if=none,"
            "cache=writeback,discard=unmap",
            "-device",
            "virtio-blk-device,drive=data",
            "-device",
            "virtio-serial-device",
            "-chardev",
            f"socket,id=agent,path={run / 'agent.sock'},server=on,wait=off",
            "-device",
            f"virtserialport,chardev=agent,name={AGENT_PORT}",
            "-qmp",
            f"unix:{run / 'qmp.sock'},server=on,wait=off",
        ]
        if spec.network == "egress":
            # User-mode networking: outbound only, no host port forwards.
            argv += ["-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0"]
        if incoming_fd is not None:
            argv += ["-incoming", f"fd:{incoming_fd}"]
        return argv

    # -- booting and stopping -------------------------------------------------------------

    def _prepare_runtime(self, vm_id: str) -> Path:
        run = self.runtime_dir(vm_id)
        longest = run / "agent.sock"
        if len(str(longest)) > SUN_PATH_MAX:
            raise DriverUnavailable(
                "qemu",
                f"the runtime directory {run} is too long for unix sockets",
                "set the qemu driver's runtime_dir to a short path",
            )
        run.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in ("qmp.sock", "agent.sock", "qemu.pid"):
            (run / name).unlink(missing_ok=True)
        return run

    def _cleanup_runtime(self, vm_id: str) -> None:
        shutil.rmtree(self.runtime_dir(vm_id), ignore_errors=True)

    def _trim_console(self, vm_id: str) -> None:
        console = self._console(vm_id)
        cap = self.config.console_log_bytes
        try:
            size = console.stat().st_size
        except FileNotFoundError:
            return
        if size > cap:
            with console.open("rb") as handle:
                handle.seek(size - cap // 2)
                tail = handle.read()
            console.write_bytes(tail)

    def console_tail(self, vm_id: str, size: int = 1500) -> str:
        lines = []
        for path in (self._qemu_log(vm_id), self._console(vm_id)):
            try:
                with path.open("rb") as handle:
                    handle.seek(max(0, path.stat().st_size - size))
                    text = handle.read().decode(errors="replace").strip()
            except OSError:
                continue
            if text:
                lines.append(f"[{path.name}] {text}")
        return "\n".join(lines) or "(no console output)"

    async def _wait_for_qmp(self, vm_id: str, pid: int) -> None:
        socket_path = self.runtime_dir(vm_id) / "qmp.sock"
        with anyio.move_on_after(QMP_APPEAR_S):
            while not socket_path.exists():
                if not process_alive(pid):
                    raise VMOperationFailed("QEMU exited at once")
                await anyio.sleep(0.02)
            return
        raise VMOperationFailed(f"QEMU's control socket did not appear within {QMP_APPEAR_S:g}s")

    async def _await_agent(self, vm_id: str, pid: int) -> None:
        """Wait for the agent's hello, or for QEMU to exit, whichever comes first."""
        timeout = self.config.boot_timeout_s
        outcome: dict[str, Any] = {}

        async def handshake(scope: anyio.CancelScope) -> None:
            try:
                channel = await open_agent_channel(self.runtime_dir(vm_id) / "agent.sock", timeout)
                await channel.aclose()
                outcome["ok"] = True
            except GuestUnreachable as err:
                outcome["error"] = str(err)
            scope.cancel()

        async def exit_watch(scope: anyio.CancelScope) -> None:
            if await wait_exit(pid, timeout + 5):
                outcome.setdefault("error", "QEMU exited before the guest agent answered")
                scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(handshake, group.cancel_scope)
            group.start_soon(exit_watch, group.cancel_scope)
        if not outcome.get("ok"):
            raise VMOperationFailed(
                outcome.get("error") or f"the guest agent did not answer within {timeout:g}s"
            )

    async def _boot(self, record: _VMRecord, *, resume_from: Path | None = None) -> None:
        """Start QEMU for ``record`` and wait until its agent answers; on any failure nothing
        is left running and the error carries the console's last lines."""
        vm_id = record.vm_id
        artifacts = self.artifacts()
        accel = await self.accel()
        initrd = await self._initrd(artifacts)
        self._prepare_runtime(vm_id)
        self._trim_console(vm_id)
        extra = {3: (resume_from, os.O_RDONLY)} if resume_from is not None else None
        argv = self.qemu_argv(
            record, artifacts, initrd, accel, incoming_fd=3 if resume_from else None
        )
        pid = spawn(argv, log=self._qemu_log(vm_id), extra_fds=extra)
        try:
            await self._wait_for_qmp(vm_id, pid)
            if resume_from is not None:
                await self._finish_incoming(vm_id)
            await self._await_agent(vm_id, pid)
        except BaseException as err:
            with anyio.CancelScope(shield=True):
                kill(pid)
                await wait_exit(pid, KILL_WAIT_S)
                self._cleanup_runtime(vm_id)
            if isinstance(err, DriverError):
                raise VMOperationFailed(
                    f"VM {vm_id} did not come up: {err}. Last console lines:\n"
                    f"{self.console_tail(vm_id)}"
                ) from err
            raise

    async def _qmp(self, vm_id: str) -> QMPClient:
        return await QMPClient.connect(self.runtime_dir(vm_id) / "qmp.sock", QMP_TIMEOUT_S)

    async def _finish_incoming(self, vm_id: str) -> None:
        async with await self._qmp(vm_id) as qmp:
            with anyio.fail_after(SUSPEND_TIMEOUT_S):
                while True:
                    status = (await qmp.execute("query-status"))["status"]
                    if status not in STARTING_STATES:
                        break
                    await anyio.sleep(0.05)
            if status != "running":
                await qmp.execute("cont")

    async def _close_channel(self, vm_id: str) -> None:
        await self._channels.close(vm_id)

    async def _power_off(self, vm_id: str, pid: int, *, graceful: bool) -> None:
        """Stop QEMU: ask the guest (it syncs and unmounts), then QMP quit, SIGTERM, SIGKILL."""
        if graceful:
            try:
                channel = await open_agent_channel(
                    self.runtime_dir(vm_id) / "agent.sock", CHANNEL_TIMEOUT_S
                )
            except GuestUnreachable:
                pass
            else:
                try:
                    request = {"jsonrpc": "2.0", "id": "shutdown", "method": "system.shutdown"}
                    await channel.send(json.dumps(request).encode() + b"\n")
                    if await wait_exit(pid, self.config.stop_timeout_s):
                        return
                finally:
                    await channel.aclose()
        try:
            async with await self._qmp(vm_id) as qmp:
                await qmp.execute("quit")
        except DriverError:
            pass
        if await wait_exit(pid, KILL_WAIT_S):
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            kill(pid, signum)
            if await wait_exit(pid, KILL_WAIT_S):
                return
        raise VMOperationFailed(f"QEMU (pid {pid}) of VM {vm_id} does not exit even on SIGKILL")

    # -- VMDriver ---------------------------------------------------------------------------

    async def create_project_vm(self, spec: VMSpec) -> VMCreationResult:
        self._qemu_binary()
        self.artifacts()
        vm_id = vm_id_for(spec.project_id)
        directory = self.vm_dir(vm_id)
        if self.records.exists(vm_id):
            raise VMCreationFailed(f"VM {vm_id} already exists; destroy it first")
        record = _VMRecord(
            vm_id=vm_id,
            project_id=spec.project_id,
            name=spec.name,
            created_at=datetime.now(UTC),
            labels={**spec.labels, **self.context.labels(spec.project_id, vm_id)},
            spec=spec,
            state="running",
        )
        disk_gb = spec.disk_gb or self.template(spec.project_type).disk_gb
        try:
            directory.mkdir(parents=True, exist_ok=True)
            await make_data_disk(self.data_disk(vm_id), disk_gb)
            self._save(record)
            async with self._exclusive(vm_id):
                await self._boot(record)
        except (DriverError, DiskError, OSError) as err:
            with anyio.CancelScope(shield=True):
                await self._remove(vm_id)
            raise VMCreationFailed(f"could not create VM {vm_id}: {err}") from err
        accel = await self.accel()
        return VMCreationResult(
            vm_id=vm_id,
            status=VMStatus.RUNNING,
            workspace_path=str(self.data_disk(vm_id)),
            details={"accel": accel.accel, "disk_gb": f"{disk_gb:g}"},
        )

    async def start_project_vm(self, vm_id: str, spec: VMSpec | None = None) -> None:
        async with self._exclusive(vm_id):
            record = self._load(vm_id)
            if self._pid(vm_id) is not None:
                return  # already running (perhaps started by an earlier server): adopt it
            suspended = self.suspend_file(vm_id)
            if spec is not None and spec != record.spec:
                if spec.shape() != record.spec.shape():
                    suspended.unlink(missing_ok=True)  # a different machine cannot take it
                record = record.model_copy(update={"spec": spec})
                self._save(record)
                if spec.disk_gb:
                    try:
                        await grow_data_disk(self.data_disk(vm_id), spec.disk_gb)
                    except DiskError as err:
                        raise VMOperationFailed(f"could not resize VM {vm_id}: {err}") from err
            if not self.data_disk(vm_id).is_file():
                raise VMOperationFailed(
                    f"the workspace disk of VM {vm_id} is missing at {self.data_disk(vm_id)}"
                )
            if record.state == "suspended" and suspended.is_file():
                await self._resume(record)
            else:
                suspended.unlink(missing_ok=True)
                await self._boot(record)
            self._set_state(record, "running")

    async def stop_project_vm(self, vm_id: str) -> None:
        async with self._exclusive(vm_id):
            record = self._load(vm_id)
            await self._close_channel(vm_id)
            pid = self._pid(vm_id)
            if pid is not None:
                await self._power_off(vm_id, pid, graceful=True)
            self._cleanup_runtime(vm_id)
            self.suspend_file(vm_id).unlink(missing_ok=True)
            self._set_state(record, "stopped")

    async def _remove(self, vm_id: str) -> None:
        await self._close_channel(vm_id)
        pid = self._pid(vm_id)
        if pid is not None:
            await self._power_off(vm_id, pid, graceful=False)
        self._cleanup_runtime(vm_id)
        directory = self.vm_dir(vm_id)
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(directory, ignore_errors=True))
        if directory.exists():
            raise VMOperationFailed(f"could not remove {directory}; check its permissions")

    async def destroy_project_vm(self, vm_id: str) -> None:
        async with self._exclusive(vm_id):
            await self._remove(vm_id)
        self._locks.forget(vm_id)

    async def get_vm_status(self, vm_id: str) -> VMStatus:
        record = self._load(vm_id)
        if self._pid(vm_id) is None:
            return VMStatus.STOPPED
        try:
            async with await self._qmp(vm_id) as qmp:
                status = (await qmp.execute("query-status"))["status"]
        except DriverError:
            return VMStatus.FAILED
        if status in RUNNING_STATES:
            return VMStatus.RUNNING
        if status in STARTING_STATES:
            return VMStatus.CREATING
        if status in FAILED_STATES:
            return VMStatus.FAILED
        return VMStatus.STOPPED if record.state != "running" else VMStatus.FAILED

    async def get_vm_url(self, vm_id: str) -> str | None:
        self._load(vm_id)
        return None

    async def open_channel(self, vm_id: str) -> anyio.abc.ByteStream:
        async with self._locks(vm_id):
            record = self._load(vm_id)
            if self._pid(vm_id) is None:
                how = "resume it" if record.state == "suspended" else "start it first"
                raise GuestUnreachable(f"VM {vm_id} is not running; {how}")
            # One channel per VM: a new one replaces the old (the agent kills its commands).
            await self._close_channel(vm_id)
            channel = await open_agent_channel(
                self.runtime_dir(vm_id) / "agent.sock", CHANNEL_TIMEOUT_S
            )
            return await self._channels.replace(vm_id, channel)

    async def list_vms(self) -> list[VMInfo]:
        found: dict[str, VMInfo] = {}
        vms = self.root / "vms"
        for directory in sorted(vms.iterdir()) if vms.is_dir() else []:
            vm_id = directory.name
            try:
                record = self._load(vm_id)
            except (VMNotFound, VMOperationFailed):
                if (directory / "data.ext4").exists():
                    # A data disk whose record is gone (a crash between the two): gc finds it.
                    project_id = vm_id.removeprefix("pvm-")
                    found[vm_id] = VMInfo(
                        vm_id=vm_id,
                        project_id=project_id,
                        status=VMStatus.STOPPED,
                        driver=self.name,
                        labels=self.context.labels(project_id, vm_id),
                        detail=f"{directory / 'data.ext4'} (data disk without a VM record)",
                    )
                continue
            running = self._pid(vm_id) is not None
            found[vm_id] = VMInfo(
                vm_id=vm_id,
                project_id=record.project_id,
                status=VMStatus.RUNNING if running else VMStatus.STOPPED,
                driver=self.name,
                created_at=record.created_at,
                labels=record.labels,
                detail=f"{self.data_disk(vm_id)} ({record.state})",
            )
        return sorted(found.values(), key=lambda info: info.vm_id)

    async def storage_mode(self) -> str:
        """How ``max_storage_gb`` is kept by this driver (shown by get_project)."""
        return (
            "filesystem: the workspace is the VM's own ext4 disk of max_storage_gb; "
            "a write past it fails with 'No space left on device'"
        )

    async def probe(self) -> Availability:
        try:
            qemu = self._qemu_binary()
            artifacts = self.artifacts()
            accel = await self.accel()
        except DriverUnavailable as err:
            return Availability(driver=self.name, usable=False, reason=str(err))
        version = await anyio.run_process([qemu, "--version"], check=False)
        first_line = version.stdout.decode(errors="replace").splitlines()[:1]
        emulated = accel.accel == "tcg"
        return Availability(
            driver=self.name,
            usable=True,
            reason=f"QEMU microvm with {accel.accel.upper()}"
            + (
                " (emulated, slow: used only when asked for with --driver qemu)" if emulated else ""
            ),
            automatic=not emulated,
            details={
                "qemu": f"{qemu} ({first_line[0] if first_line else 'unknown version'})",
                "accel": accel.accel,
                "accel_reason": accel.reason,
                "image": f"{artifacts.digest} ({artifacts.directory})",
                "kernel": artifacts.kernel_release,
            },
        )

    async def aclose(self) -> None:
        await self._channels.close_all()

    # -- sleep with memory ----------------------------------------------------------------

    async def suspend_project_vm(self, vm_id: str) -> None:
        """Save the running VM, memory included, to its suspend file and end QEMU."""
        async with self._exclusive(vm_id):
            record = self._load(vm_id)
            pid = self._pid(vm_id)
            if pid is None:
                raise VMOperationFailed(f"VM {vm_id} is not running; only a running VM sleeps")
            await self._close_channel(vm_id)
            target = self.suspend_file(vm_id)
            temporary = target.with_name("suspend.state.partial")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                async with await self._qmp(vm_id) as qmp:
                    await qmp.execute("stop")
                    await qmp.execute(
                        "migrate-set-parameters", {"max-bandwidth": 8 * 1024 * 1024 * 1024}
                    )
                    await qmp.execute("getfd", {"fdname": "suspend"}, fds=[fd])
                    await qmp.execute("migrate", {"uri": "fd:suspend"})
                    with anyio.fail_after(SUSPEND_TIMEOUT_S):
                        while True:
                            info = await qmp.execute("query-migrate")
                            if info.get("status") == "completed":
                                break
                            if info.get("status") in ("failed", "cancelled"):
                                raise VMOperationFailed(
                                    f"saving VM {vm_id} failed: {info.get('error-desc', info)}"
                                )
                            await anyio.sleep(0.05)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                temporary.unlink(missing_ok=True)
                with anyio.CancelScope(shield=True):
                    try:
                        async with await self._qmp(vm_id) as qmp:
                            await qmp.execute("cont")
                    except DriverError:
                        pass
                raise
            os.close(fd)
            temporary.replace(target)
            await self._power_off(vm_id, pid, graceful=False)
            self._cleanup_runtime(vm_id)
            self._set_state(record, "suspended")

    def suspended_bytes(self, vm_id: str) -> int:
        try:
            return self.suspend_file(vm_id).stat().st_blocks * 512
        except (FileNotFoundError, VMNotFound):
            return 0

    async def resume_project_vm(self, vm_id: str) -> None:
        """Boot the VM from its suspend file: its processes carry on where they were."""
        async with self._exclusive(vm_id):
            record = self._load(vm_id)
            if self._pid(vm_id) is not None:
                return
            if record.state != "suspended" or not self.suspend_file(vm_id).is_file():
                raise VMOperationFailed(
                    f"VM {vm_id} is not suspended; start it with start_project_vm"
                )
            await self._resume(record)
            self._set_state(record, "running")

    async def _resume(self, record: _VMRecord) -> None:
        state = self.suspend_file(record.vm_id)
        await self._boot(record, resume_from=state)
        # The disk has moved on since: that memory image must never be loaded again.
        state.unlink(missing_ok=True)


_: type[VMDriver] = QemuDriver
