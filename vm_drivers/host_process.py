"""What the ``process`` and ``local`` drivers share: the guest agent runs on this host.

A VM is a record file and a workspace directory under the driver's root; while it runs, the
agent lives exactly as long as its channel (by default the agent process's stdio), and a
stopped VM has no process at all. Subclasses say how the agent is started (plainly, or inside
a sandbox, on descriptors of its own) and what they prepare around it (``provision_workspace``:
a disk image, say).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import anyio
import anyio.abc
from pydantic import BaseModel, Field

from guest_runtime.agent.walk import remove_tree
from guest_runtime.bundle import write_agent_zipapp
from vm_drivers.base import DriverContext, VMCreationResult, VMInfo, VMSpec, VMStatus
from vm_drivers.errors import (
    DriverError,
    DriverUnavailable,
    GuestUnreachable,
    VMCreationFailed,
    VMOperationFailed,
)
from vm_drivers.kit.channels import ChannelSlots
from vm_drivers.kit.lifecycle import ClosingDriver
from vm_drivers.kit.locks import KeyedLocks
from vm_drivers.kit.naming import VM_PREFIX, vm_id_for
from vm_drivers.kit.records import RecordStore
from vm_drivers.kit.streams import ProcessStream

__all__ = ["HostProcessDriver", "HostVMRecord", "log_tail"]


class HostVMRecord(BaseModel):
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
    disk_gb: float | None = None
    workspace_disk: bool = Field(
        default=False, description="the workspace is a disk image of its own (local, as root)"
    )

    def with_spec(self, spec: VMSpec) -> HostVMRecord:
        return self.model_copy(
            update={
                "network": spec.network,
                "cpus": spec.cpus,
                "memory_mb": spec.memory_mb,
                "pids_limit": spec.pids_limit,
                "disk_gb": spec.disk_gb,
            }
        )


def log_tail(path: Path, size: int = 2000) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode(errors="replace").strip() or "(no output)"
    except OSError:
        return "(no log)"


class HostProcessDriver(ClosingDriver):
    name: ClassVar[str]
    install_hint: ClassVar[str] = ""

    def __init__(self, root: Path, context: DriverContext) -> None:
        self.context = context
        self.root = root
        self.records = RecordStore(root / "vms", HostVMRecord, lambda r: r.vm_id)
        self._locks = KeyedLocks()
        self._channels = ChannelSlots()

    # -- what subclasses provide --------------------------------------------------------------

    def agent_command(self, record: HostVMRecord, agent: Path) -> list[str]:
        """The argv that runs the guest agent for ``record`` (its stdio is the channel), for
        the default ``start_agent``."""
        raise NotImplementedError

    def agent_environment(self, record: HostVMRecord) -> dict[str, str] | None:
        """The agent's environment (commands inherit it); None: inherit the server's."""
        return None

    def check_usable(self) -> None:
        """Raise ``DriverUnavailable`` (with a hint) if the VM cannot run here."""

    async def prepare(self, record: HostVMRecord, argv: list[str]) -> list[str]:
        """Set up around a starting agent (limits, say); may wrap ``argv``."""
        return argv

    async def released(self, vm_id: str) -> None:
        """The agent of ``vm_id`` has ended: undo what ``prepare`` set up."""

    async def provision_workspace(self, record: HostVMRecord) -> HostVMRecord:
        """Make the workspace ready for an agent (mounted, sized, owned); return the record
        as it should be saved. Called on create, start and before every agent starts."""
        return record

    async def remove_workspace(self, vm_id: str) -> None:
        """Before the workspace directory is deleted with its VM: undo ``provision_workspace``."""

    # -- state on disk ------------------------------------------------------------------------

    def workspace_dir(self, vm_id: str) -> Path:
        return self.root / "workspaces" / vm_id

    def log_path(self, vm_id: str) -> Path:
        return self.root / "logs" / f"{vm_id}.log"

    # -- the agent ----------------------------------------------------------------------------

    async def start_agent(self, record: HostVMRecord, agent: Path) -> anyio.abc.ByteStream:
        """Start the agent for ``record`` and return its channel. By default the agent's
        stdio is the channel; ``released`` runs when the channel closes or this fails."""
        argv = await self.prepare(record, self.agent_command(record, agent))
        log_path = self.log_path(record.vm_id)
        with log_path.open("ab") as log:
            try:
                process = await anyio.open_process(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=self.agent_environment(record),
                )
            except OSError as err:
                raise DriverUnavailable(
                    self.name, f"could not start the guest agent: {err}", self.install_hint
                ) from err
        return ProcessStream(process, lambda: log_tail(log_path))

    async def _spawn(self, record: HostVMRecord) -> anyio.abc.ByteStream:
        record = await self._provisioned(record)
        agent = await anyio.to_thread.run_sync(write_agent_zipapp, self.root / "agent")
        self.log_path(record.vm_id).parent.mkdir(parents=True, exist_ok=True)
        try:
            stream = await self.start_agent(record, agent)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.released(record.vm_id)
            raise
        return _HostChannel(self, record.vm_id, stream)

    async def _provisioned(self, record: HostVMRecord) -> HostVMRecord:
        updated = await self.provision_workspace(record)
        if updated != record:
            self.records.save(updated)
        return updated

    async def _end_agent(self, vm_id: str) -> None:
        await self._channels.close(vm_id)

    # -- VMDriver -----------------------------------------------------------------------------

    async def create_project_vm(self, spec: VMSpec) -> VMCreationResult:
        self.check_usable()
        vm_id = vm_id_for(spec.project_id)
        record = HostVMRecord(
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
            record = await self.provision_workspace(record)
            self.records.save(record)
        except (OSError, DriverError) as err:
            with anyio.CancelScope(shield=True):
                await self.remove_workspace(vm_id)
            shutil.rmtree(workspace, ignore_errors=True)
            raise VMCreationFailed(
                f"could not create the workspace {workspace}: {err}; check the data directory "
                "is writable and has space"
            ) from err
        return VMCreationResult(vm_id=vm_id, status=VMStatus.RUNNING, workspace_path=str(workspace))

    async def start_project_vm(self, vm_id: str, spec: VMSpec | None = None) -> None:
        async with self._locks(vm_id):
            record = self.records.load(vm_id)
            if not self.workspace_dir(vm_id).is_dir():
                raise VMOperationFailed(
                    f"the workspace of VM {vm_id} is missing at {self.workspace_dir(vm_id)}"
                )
            updated = record.with_spec(spec) if spec is not None else record
            updated = updated.model_copy(update={"state": VMStatus.RUNNING})
            updated = await self.provision_workspace(updated)
            if updated != record:
                self.records.save(updated)

    async def stop_project_vm(self, vm_id: str) -> None:
        async with self._locks(vm_id):
            record = self.records.load(vm_id)
            await self._end_agent(vm_id)
            if record.state != VMStatus.STOPPED:
                self.records.save(record.model_copy(update={"state": VMStatus.STOPPED}))

    async def destroy_project_vm(self, vm_id: str) -> None:
        async with self._locks(vm_id):
            await self._end_agent(vm_id)
            await self.remove_workspace(vm_id)
            workspace = self.workspace_dir(vm_id)
            with contextlib.suppress(OSError):
                # Iterative: a workspace may hold a tree deeper than the recursion limit.
                await anyio.to_thread.run_sync(remove_tree, str(workspace))
            if workspace.exists():
                raise VMOperationFailed(
                    f"could not remove the workspace {workspace}; check its permissions"
                )
            self.records.remove(vm_id)
            self.log_path(vm_id).unlink(missing_ok=True)
        self._locks.forget(vm_id)

    async def get_vm_status(self, vm_id: str) -> VMStatus:
        return self.records.load(vm_id).state

    async def get_vm_url(self, vm_id: str) -> str | None:
        """None: a host process has no address of its own (it shares the host's, or none)."""
        self.records.load(vm_id)
        return None

    async def open_channel(self, vm_id: str) -> anyio.abc.ByteStream:
        async with self._locks(vm_id):
            record = self.records.load(vm_id)
            if record.state != VMStatus.RUNNING:
                raise GuestUnreachable(f"VM {vm_id} is {record.state}; start it first")
            # One channel per VM: a new one ends the agent (and commands) of the last.
            await self._end_agent(vm_id)
            return await self._channels.replace(vm_id, await self._spawn(record))

    async def list_vms(self) -> list[VMInfo]:
        found: dict[str, VMInfo] = {}
        for record in self.records.all():
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
            if path.name not in found and path.name.startswith(VM_PREFIX):
                project_id = path.name.removeprefix(VM_PREFIX)
                found[path.name] = VMInfo(
                    vm_id=path.name,
                    project_id=project_id,
                    status=VMStatus.STOPPED,
                    driver=self.name,
                    labels=self.context.labels(project_id, path.name),
                    detail=f"{path} (workspace without a VM record)",
                )
        return sorted(found.values(), key=lambda info: info.vm_id)

    async def aclose(self) -> None:
        await self._channels.close_all()


class _HostChannel(anyio.abc.ByteStream):
    """The agent's channel; when it closes, the driver undoes what it prepared for the agent."""

    def __init__(self, driver: HostProcessDriver, vm_id: str, stream: anyio.abc.ByteStream) -> None:
        self._driver = driver
        self._vm_id = vm_id
        self.stream = stream

    async def send(self, item: bytes) -> None:
        await self.stream.send(item)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.stream.receive(max_bytes)

    async def aclose(self) -> None:
        try:
            await self.stream.aclose()
        finally:
            with anyio.CancelScope(shield=True):
                await self._driver.released(self._vm_id)
