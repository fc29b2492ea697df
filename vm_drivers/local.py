"""The ``local`` driver: each project VM is a bubblewrap sandbox on this host.

The sandbox sees the host's root read-only (minus private places such as ``/home``, ``/root``,
``/run`` and ProjectVM's own data directory), a private ``/tmp``, ``/proc`` and ``/dev``, no
network unless the project allows egress, and the project's workspace directory read-write at
``/workspace``. The guest agent is the sandbox's main process; its stdio is the channel, so a
sandbox lives exactly as long as its channel. A stopped VM has no process; its workspace stays.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import anyio
import anyio.abc
from anyio.abc import Process
from pydantic import BaseModel, ValidationError

from guest_runtime.bundle import write_agent_zipapp
from vm_drivers.base import (
    Availability,
    DriverContext,
    VMCreationResult,
    VMDriver,
    VMInfo,
    VMSpec,
    VMStatus,
)
from vm_drivers.cgroups import CgroupLimits, Cgroups
from vm_drivers.config import LocalDriverConfig
from vm_drivers.errors import (
    DriverUnavailable,
    GuestUnreachable,
    VMCreationFailed,
    VMNotFound,
    VMOperationFailed,
)

__all__ = ["LocalDriver"]

SANDBOX_WORKSPACE = "/workspace"
SANDBOX_AGENT = "/.projectvm/agent.pyz"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Never visible in a sandbox: they are per-boot or per-sandbox in a real VM.
ALWAYS_PRIVATE = {"proc", "dev", "sys", "tmp", "workspace", "lost+found", ".projectvm"}
STOP_GRACE_S = 5.0
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)"


class _VMRecord(BaseModel):
    vm_id: str
    project_id: str
    name: str
    state: VMStatus
    network: str
    created_at: datetime
    labels: dict[str, str]
    cpus: float | None = None
    memory_mb: int | None = None
    pids_limit: int | None = None

    def with_spec(self, spec: VMSpec) -> _VMRecord:
        return self.model_copy(
            update={
                "network": spec.network,
                "cpus": spec.cpus,
                "memory_mb": spec.memory_mb,
                "pids_limit": spec.pids_limit,
            }
        )


class _SandboxChannel(anyio.abc.ByteStream):
    """The sandbox's stdio as one byte stream; closing it ends the sandbox."""

    def __init__(self, process: Process, log_path: Path) -> None:
        self.process = process
        self._log_path = log_path
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout

    async def send(self, item: bytes) -> None:
        await self._stdin.send(item)

    async def send_eof(self) -> None:
        await self._stdin.aclose()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self._stdout.receive(max_bytes)
        except anyio.EndOfStream:
            with anyio.move_on_after(STOP_GRACE_S):
                await self.process.wait()
            code = self.process.returncode
            if code not in (0, None, -signal.SIGKILL, -signal.SIGTERM):
                raise anyio.BrokenResourceError(
                    f"the sandbox exited with status {code}: {_tail(self._log_path)}"
                ) from None
            raise

    async def aclose(self) -> None:
        await terminate(self.process)


async def terminate(process: Process) -> None:
    """End a sandbox: close its stdin (the agent kills its commands and exits), then force."""
    with anyio.CancelScope(shield=True):
        if process.stdin is not None:
            await process.stdin.aclose()
        with anyio.move_on_after(STOP_GRACE_S):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


def _tail(path: Path, size: int = 2000) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode(errors="replace").strip() or "(no output)"
    except OSError:
        return "(no log)"


class LocalDriver:
    name: ClassVar[str] = "local"

    def __init__(self, config: LocalDriverConfig, context: DriverContext) -> None:
        self.config = config
        self.context = context
        self.data_dir = context.data_dir
        self.root = config.root_dir or context.data_dir / "local"
        self._channels: dict[str, _SandboxChannel] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self.cgroups = Cgroups.detect(f"projectvm-{context.instance_id}")

    # -- state on disk ------------------------------------------------------------------------

    def _record_path(self, vm_id: str) -> Path:
        if not vm_id.replace("-", "").replace("_", "").isalnum():
            raise VMNotFound.of(vm_id, "not a local VM id")
        return self.root / "vms" / f"{vm_id}.json"

    def workspace_dir(self, vm_id: str) -> Path:
        return self.root / "workspaces" / vm_id

    def _log_path(self, vm_id: str) -> Path:
        return self.root / "logs" / f"{vm_id}.log"

    def _load(self, vm_id: str) -> _VMRecord:
        path = self._record_path(vm_id)
        try:
            return _VMRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise VMNotFound.of(vm_id) from None
        except ValidationError as err:
            raise VMOperationFailed(
                f"the record of VM {vm_id} at {path} is corrupt: {err}"
            ) from err

    def _save(self, record: _VMRecord) -> None:
        path = self._record_path(record.vm_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        with temporary.open("wb") as handle:
            handle.write(record.model_dump_json(indent=2).encode())
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)

    def _lock(self, vm_id: str) -> anyio.Lock:
        return self._locks.setdefault(vm_id, anyio.Lock())

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

    def sandbox_argv(self, record: _VMRecord, agent: Path) -> list[str]:
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

    def _limits(self, record: _VMRecord) -> CgroupLimits:
        memory_mb = record.memory_mb or self.config.memory_mb
        return CgroupLimits(
            pids=record.pids_limit or self.config.pids_limit,
            memory_bytes=memory_mb * 1024 * 1024 if memory_mb else None,
            cpus=record.cpus or self.config.cpus,
        )

    async def _spawn(self, record: _VMRecord) -> _SandboxChannel:
        agent = await anyio.to_thread.run_sync(write_agent_zipapp, self.root / "agent")
        procs = self.cgroups.prepare(record.vm_id, self._limits(record))
        argv = Cgroups.join_command(procs, self.sandbox_argv(record, agent))
        log_path = self._log_path(record.vm_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            try:
                process = await anyio.open_process(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
                )
            except OSError as err:
                raise DriverUnavailable(
                    "local", f"could not start bubblewrap: {err}", INSTALL_HINT
                ) from err
        return _SandboxChannel(process, log_path)

    async def _end_sandbox(self, vm_id: str) -> None:
        channel = self._channels.pop(vm_id, None)
        if channel is not None:
            await channel.aclose()
            await self.cgroups.release(vm_id)

    # -- VMDriver -----------------------------------------------------------------------------

    async def create_project_vm(self, spec: VMSpec) -> VMCreationResult:
        self._bwrap()
        self._python()
        vm_id = f"pvm-{spec.project_id}"
        record = _VMRecord(
            vm_id=vm_id,
            project_id=spec.project_id,
            name=spec.name,
            state=VMStatus.RUNNING,
            network=spec.network,
            created_at=datetime.now(UTC),
            labels={**spec.labels, **self.context.labels(spec.project_id, vm_id)},
        ).with_spec(spec)
        workspace = self.workspace_dir(vm_id)
        try:
            workspace.mkdir(parents=True, exist_ok=True)
            self._save(record)
        except OSError as err:
            shutil.rmtree(workspace, ignore_errors=True)
            raise VMCreationFailed(
                f"could not create the workspace {workspace}: {err}; check the data directory "
                "is writable and has space"
            ) from err
        return VMCreationResult(vm_id=vm_id, status=VMStatus.RUNNING, workspace_path=str(workspace))

    async def start_project_vm(self, vm_id: str, spec: VMSpec | None = None) -> None:
        async with self._lock(vm_id):
            record = self._load(vm_id)
            if not self.workspace_dir(vm_id).is_dir():
                raise VMOperationFailed(
                    f"the workspace of VM {vm_id} is missing at {self.workspace_dir(vm_id)}"
                )
            updated = record.with_spec(spec) if spec is not None else record
            updated = updated.model_copy(update={"state": VMStatus.RUNNING})
            if updated != record:
                self._save(updated)

    async def stop_project_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            record = self._load(vm_id)
            await self._end_sandbox(vm_id)
            if record.state != VMStatus.STOPPED:
                self._save(record.model_copy(update={"state": VMStatus.STOPPED}))

    async def destroy_project_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            await self._end_sandbox(vm_id)
            workspace = self.workspace_dir(vm_id)
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(workspace, ignore_errors=True))
            if workspace.exists():
                raise VMOperationFailed(
                    f"could not remove the workspace {workspace}; check its permissions"
                )
            for path in (self._record_path(vm_id), self._log_path(vm_id)):
                path.unlink(missing_ok=True)
        self._locks.pop(vm_id, None)

    async def get_vm_status(self, vm_id: str) -> VMStatus:
        return self._load(vm_id).state

    async def get_vm_url(self, vm_id: str) -> str | None:
        self._load(vm_id)
        return None

    async def open_channel(self, vm_id: str) -> anyio.abc.ByteStream:
        async with self._lock(vm_id):
            record = self._load(vm_id)
            if record.state != VMStatus.RUNNING:
                raise GuestUnreachable(f"VM {vm_id} is {record.state}; start it first")
            # One sandbox per VM: a new channel replaces whatever sandbox an old one held.
            await self._end_sandbox(vm_id)
            channel = await self._spawn(record)
            self._channels[vm_id] = channel
            return channel

    async def list_vms(self) -> list[VMInfo]:
        found: dict[str, VMInfo] = {}
        records = self.root / "vms"
        for path in sorted(records.glob("*.json")) if records.is_dir() else []:
            try:
                record = _VMRecord.model_validate_json(path.read_bytes())
            except (OSError, ValidationError):
                continue
            found[record.vm_id] = VMInfo(
                vm_id=record.vm_id,
                project_id=record.project_id,
                status=record.state,
                driver=self.name,
                created_at=record.created_at,
                labels=record.labels,
                detail=str(self.workspace_dir(record.vm_id)),
            )
        # A workspace whose record is gone (a crash between the two) is a VM too, for gc.
        workspaces = self.root / "workspaces"
        for path in sorted(workspaces.iterdir()) if workspaces.is_dir() else []:
            if path.name not in found and path.name.startswith("pvm-"):
                project_id = path.name.removeprefix("pvm-")
                found[path.name] = VMInfo(
                    vm_id=path.name,
                    project_id=project_id,
                    status=VMStatus.STOPPED,
                    driver=self.name,
                    labels=self.context.labels(project_id, path.name),
                    detail=f"{path} (workspace without a VM record)",
                )
        return sorted(found.values(), key=lambda info: info.vm_id)

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

    async def aclose(self) -> None:
        for vm_id in list(self._channels):
            await self._end_sandbox(vm_id)


_: type[VMDriver] = LocalDriver
