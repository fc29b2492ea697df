"""The lima driver's record of each VM, one JSON file per VM on the host.

A record maps the VM id to the Lima instance that holds it (instance names are short and
derived, see ``instance_name``), keeps the labels for ``list_vms`` and the spec to re-apply on
start. It is written *before* the first limactl call of a create, so a crash leaves nothing the
driver cannot find again.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from vm_drivers.base import VMSpec, VMStatus
from vm_drivers.errors import VMNotFound, VMOperationFailed

__all__ = ["LimaVMRecord", "RecordStore", "instance_name"]

_VM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def instance_name(prefix: str, installation: str, project_id: str) -> str:
    """A short, deterministic Lima instance name for a project.

    Lima keeps sockets in ``$LIMA_HOME/<name>/``, and macOS limits a socket path to 104 bytes,
    so ``pvm-<project id>`` can be too long: the name is the prefix and 10 hex digits of a hash
    of this installation's id and the project id (installations sharing a LIMA_HOME never clash).
    """
    digest = hashlib.sha256(f"{installation}:{project_id}".encode()).hexdigest()
    return f"{prefix}{digest[:10]}"


class LimaVMRecord(BaseModel):
    vm_id: str
    project_id: str
    name: str
    mode: Literal["instance", "shared"]
    instance: str
    workspace: str
    created_at: datetime
    labels: dict[str, str]
    spec: VMSpec
    # In shared mode the instance outlives the project: this says whether the project is on.
    state: VMStatus = VMStatus.CREATING


class RecordStore:
    """Records as ``<directory>/<vm id>.json``, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, vm_id: str) -> Path:
        if not _VM_ID.match(vm_id):
            raise VMNotFound.of(vm_id, "not a lima VM id")
        return self.directory / f"{vm_id}.json"

    def load(self, vm_id: str) -> LimaVMRecord:
        path = self.path(vm_id)
        try:
            return LimaVMRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise VMNotFound.of(vm_id) from None
        except ValidationError as err:
            raise VMOperationFailed(
                f"the record of VM {vm_id} at {path} is corrupt ({err}); remove it and run "
                "`projectvm gc` to find the Lima instance"
            ) from err

    def save(self, record: LimaVMRecord) -> None:
        path = self.path(record.vm_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        with temporary.open("wb") as handle:
            handle.write(record.model_dump_json(indent=2).encode())
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)

    def delete(self, vm_id: str) -> None:
        self.path(vm_id).unlink(missing_ok=True)

    def all(self) -> list[LimaVMRecord]:
        if not self.directory.is_dir():
            return []
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                records.append(LimaVMRecord.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError):
                continue  # a half-written or foreign file: gc reports the instance instead
        return records
