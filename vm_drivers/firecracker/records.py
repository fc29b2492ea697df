"""What the firecracker driver keeps on disk per VM, under ``DATA_DIR/firecracker/vms/<vm_id>/``.

``record.json`` (the VM: spec, labels, state, snapshot), ``data.ext4`` (the workspace disk),
``console.log`` (serial console and VMM output, capped) and ``snapshot/`` (a memory snapshot
while the VM sleeps with its memory, or while the VM restored from it runs: Firecracker maps
the memory file for the VM's whole life, so it stays untouched until then).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from guest_runtime.agent.walk import remove_tree
from vm_drivers.base import VMSpec
from vm_drivers.errors import VMNotFound, VMOperationFailed

__all__ = ["RecordStore", "SnapshotRecord", "VMRecord", "fsync_dir", "runtime_key"]

_VM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def runtime_key(instance_id: str, vm_id: str) -> str:
    """A short hex name for the VM's sockets, tap and Firecracker id.

    VM ids stay ``pvm-<project_id>``, but unix socket paths (107 bytes), tap names (15) and
    Firecracker's ``--id`` (``[A-Za-z0-9-]``, no underscore) need something shorter.
    """
    return hashlib.sha256(f"{instance_id}:{vm_id}".encode()).hexdigest()[:10]


class SnapshotRecord(BaseModel):
    """A full snapshot of a VM, and what it takes to load it again."""

    firecracker_version: str
    created_at: datetime
    shape: dict[str, object]


class VMRecord(BaseModel):
    vm_id: str
    project_id: str
    name: str
    key: str
    state: Literal["running", "stopped", "suspended"]
    spec: VMSpec
    created_at: datetime
    labels: dict[str, str]
    disk_bytes: int
    # With state "suspended": the snapshot to resume from. With "running": the snapshot the
    # VM was restored from, still mapped by Firecracker.
    snapshot: SnapshotRecord | None = None


class RecordStore:
    """Records, disks, console logs and snapshots of VMs, one directory each."""

    def __init__(self, root: Path) -> None:
        self.root = root / "vms"

    def vm_dir(self, vm_id: str) -> Path:
        if not _VM_ID.fullmatch(vm_id):
            raise VMNotFound.of(vm_id, "not a firecracker VM id")
        return self.root / vm_id

    def record_path(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "record.json"

    def disk_path(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "data.ext4"

    def console_path(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "console.log"

    def snapshot_dir(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "snapshot"

    def load(self, vm_id: str) -> VMRecord:
        path = self.record_path(vm_id)
        try:
            return VMRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise VMNotFound.of(vm_id) from None
        except ValidationError as err:
            raise VMOperationFailed(
                f"the record of VM {vm_id} at {path} is corrupt ({err.error_count()} problems); "
                "destroy the VM and create it again"
            ) from err

    def exists(self, vm_id: str) -> bool:
        return self.record_path(vm_id).exists()

    def save(self, record: VMRecord) -> None:
        path = self.record_path(record.vm_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".record.{uuid.uuid4().hex}.tmp")
        with temporary.open("wb") as handle:
            handle.write(record.model_dump_json(indent=2).encode())
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
        fsync_dir(path.parent)

    def vm_ids(self) -> list[str]:
        """Every VM directory, with a record or not (a crash can leave a disk without one)."""
        if not self.root.is_dir():
            return []
        return sorted(path.name for path in self.root.iterdir() if path.is_dir())

    def remove(self, vm_id: str) -> None:
        with contextlib.suppress(OSError):  # iterative: any depth (shutil.rmtree recurses)
            remove_tree(str(self.vm_dir(vm_id)))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
