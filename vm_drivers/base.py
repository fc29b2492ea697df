"""The driver contract: what every VM backend provides, and the values it exchanges.

A driver creates, starts, stops, destroys and inspects project VMs and opens a byte stream to the
guest agent inside one. It never runs commands or touches files itself: the guest runtime does
that, identically on every backend.
"""

from __future__ import annotations

import enum
import os
import secrets
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal, Protocol, Self, runtime_checkable

import anyio.abc
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "LABEL_INSTANCE",
    "LABEL_PROJECT",
    "LABEL_VM",
    "Availability",
    "DriverContext",
    "ReportsStorageMode",
    "SupportsSuspend",
    "VMCreationResult",
    "VMDriver",
    "VMInfo",
    "VMSpec",
    "VMStatus",
]

# Every resource a driver creates carries these labels, so `projectvm gc` can find strays.
LABEL_PROJECT = "projectvm.project"
LABEL_VM = "projectvm.vm"
LABEL_INSTANCE = "projectvm.instance"
INSTANCE_FILE = "instance-id"


class VMStatus(enum.StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"
    DESTROYING = "destroying"


class VMSpec(BaseModel):
    """What a project asks of its VM."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project_id: str
    name: str
    project_type: str = "development"
    cpus: float | None = Field(default=None, description="CPU limit; None = driver default")
    memory_mb: int | None = Field(default=None, description="memory limit; None = driver default")
    disk_gb: float | None = Field(
        default=None, description="workspace size limit (a disk's size on the VM drivers)"
    )
    pids_limit: int | None = Field(default=None, description="process limit; None = default")
    network: Literal["none", "egress"] = "none"
    image: str | None = Field(default=None, description="image/template; None = driver default")
    labels: dict[str, str] = Field(default_factory=dict)

    def shape(self) -> dict[str, object]:
        """What the VM is made of (not who it is for): changing it means re-making the VM."""
        return self.model_dump(
            include={"project_type", "cpus", "memory_mb", "pids_limit", "network", "image"}
        )


class VMCreationResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    vm_id: str
    status: VMStatus
    vm_url: str | None = None
    workspace_path: str = Field(description="where the workspace lives on the backend")
    details: dict[str, str] = Field(default_factory=dict)


class VMInfo(BaseModel):
    """One VM as the backend reports it (for reconciliation and garbage collection)."""

    model_config = ConfigDict(frozen=True)

    vm_id: str
    project_id: str | None
    status: VMStatus
    driver: str
    created_at: datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    detail: str = ""


class Availability(BaseModel):
    """Whether a driver can run here, and why not."""

    model_config = ConfigDict(frozen=True)

    driver: str
    usable: bool
    reason: str
    details: dict[str, str] = Field(default_factory=dict)
    automatic: bool = Field(
        default=True,
        description="whether the automatic choice may pick it (a slow or unisolated driver is "
        "used only when asked for by name)",
    )


class DriverContext(BaseModel):
    """What the server hands every driver: where it may keep state, and whose VMs are whose."""

    model_config = ConfigDict(frozen=True)

    data_dir: Path
    instance_id: str = Field(
        description="labels every VM this installation creates (projectvm.instance), so gc "
        "never touches another installation's VMs on a shared engine"
    )

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> DriverContext:
        """The context of the installation living in ``data_dir`` (its id is made once)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / INSTANCE_FILE
        try:
            instance_id = path.read_text().strip()
        except FileNotFoundError:
            instance_id = ""
        if not instance_id:
            instance_id = secrets.token_hex(6)
            temporary = path.with_name(f".{INSTANCE_FILE}.{os.getpid()}")
            temporary.write_text(instance_id + "\n")
            try:
                os.link(temporary, path)  # first writer wins, never overwritten
            except FileExistsError:
                instance_id = path.read_text().strip()
            finally:
                temporary.unlink()
        return cls(data_dir=data_dir, instance_id=instance_id)

    def labels(self, project_id: str, vm_id: str) -> dict[str, str]:
        """The labels every resource of a VM carries."""
        return {LABEL_PROJECT: project_id, LABEL_VM: vm_id, LABEL_INSTANCE: self.instance_id}


class Billing(BaseModel):
    """What a VM is billed as by a metered backend (the fly driver), for cost tracking."""

    model_config = ConfigDict(frozen=True)

    plan: str = Field(description="whose price table applies, e.g. 'fly'")
    guest: str = Field(description="the size's name in that table, e.g. 'shared-cpu-1x'")
    cpus: int
    memory_mb: int
    volume_gb: float = Field(description="the persistent workspace volume's provisioned size")


@runtime_checkable
class Metered(Protocol):
    """A driver whose VMs cost money by the second (the fly driver)."""

    def billing(self, spec: VMSpec) -> Billing:
        """How a VM made from ``spec`` is billed."""
        ...


@runtime_checkable
class ReportsStorageMode(Protocol):
    """A driver that says how it keeps ``max_storage_gb``: ``filesystem: ...`` where the
    workspace is a filesystem of that size, ``guard: ...`` where writers are stopped past it."""

    async def storage_mode(self) -> str: ...


@runtime_checkable
class SupportsSuspend(Protocol):
    """A driver that can put a VM to sleep with its memory (a snapshot to disk): processes in
    the VM carry on after ``start_project_vm`` (or ``resume_project_vm``) wakes it."""

    async def suspend_project_vm(self, vm_id: str) -> None:
        """Save the running VM, memory included, and end its VMM; the workspace stays."""
        ...

    async def resume_project_vm(self, vm_id: str) -> None:
        """Bring a suspended VM back where it was."""
        ...

    def suspended_bytes(self, vm_id: str) -> int:
        """Bytes the VM's saved state takes on disk (0 when it has none)."""
        ...


@runtime_checkable
class VMDriver(Protocol):
    """One VM backend. Implementations are checked against this statically."""

    name: ClassVar[str]

    async def create_project_vm(self, spec: VMSpec) -> VMCreationResult:
        """Create the VM and its persistent workspace; the VM is left running."""
        ...

    async def start_project_vm(self, vm_id: str, spec: VMSpec | None = None) -> None:
        """Start a stopped VM; with ``spec``, first bring its resources and network in line
        (settings changed while it was stopped)."""
        ...

    async def stop_project_vm(self, vm_id: str) -> None:
        """Stop the VM; the workspace survives."""
        ...

    async def destroy_project_vm(self, vm_id: str) -> None:
        """Remove the VM and its workspace. Destroying a VM that is gone is not an error."""
        ...

    async def get_vm_status(self, vm_id: str) -> VMStatus: ...

    async def get_vm_url(self, vm_id: str) -> str | None:
        """Where the VM can be reached from the outside (e.g. a Fly app), or None."""
        ...

    async def open_channel(self, vm_id: str) -> anyio.abc.ByteStream:
        """A fresh byte stream to the guest agent in a running VM.

        A VM has at most one open channel: opening one closes the one before it, and the
        commands started through that one are ended (``vm_drivers.kit.channels``).
        """
        ...

    async def list_vms(self) -> list[VMInfo]:
        """Every VM this driver's backend holds with ProjectVM labels."""
        ...

    async def probe(self) -> Availability:
        """Whether this backend is usable here (for ``projectvm doctor``)."""
        ...

    async def aclose(self) -> None:
        """Release what the driver holds (processes, clients); VMs keep their state."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
