"""The fly driver's private state on the server: one record per VM and its agent token.

The record is written *before* the first API call of a creation (the intent: names, launch id,
spec) and updated as soon as each resource id is known, so a server killed at any point leaves
nothing the next start cannot find. The token is the bearer secret the driver set as a Fly app
secret for the VM's agent; Fly never gives a secret's value back, so the driver keeps it here:
in ``<state dir>/tokens/<vm id>``, mode 0600 in a 0700 directory, never logged.
"""

from __future__ import annotations

import os
import secrets
import uuid
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vm_drivers.base import VMSpec
from vm_drivers.errors import VMOperationFailed

__all__ = ["FlyStateStore", "FlyVMRecord"]


class FlyVMRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    vm_id: str
    project_id: str
    app: str
    launch_id: str
    spec: VMSpec
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    region: str = ""
    ips_assigned: bool = False
    volume_id: str | None = None
    machine_id: str | None = None


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` atomically, readable by this user only from the first byte."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class FlyStateStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _private_dir(self, name: str) -> Path:
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)
        return directory

    def _record_path(self, vm_id: str) -> Path:
        return self._private_dir("vms") / f"{vm_id}.json"

    def _token_path(self, vm_id: str) -> Path:
        return self._private_dir("tokens") / vm_id

    def load(self, vm_id: str) -> FlyVMRecord | None:
        path = self._record_path(vm_id)
        try:
            return FlyVMRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValidationError as err:
            raise VMOperationFailed(
                f"the fly driver's record of {vm_id} at {path} is corrupt ({err}); remove it and "
                "run `projectvm gc` to find the VM's resources"
            ) from err

    def save(self, record: FlyVMRecord) -> None:
        _write_private(
            self._record_path(record.vm_id), record.model_dump_json(indent=2).encode(), 0o600
        )

    def records(self) -> list[FlyVMRecord]:
        found = []
        for path in sorted(self._private_dir("vms").glob("*.json")):
            try:
                found.append(FlyVMRecord.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError):
                continue
        return found

    def token(self, vm_id: str) -> str | None:
        try:
            return self._token_path(vm_id).read_text().strip() or None
        except FileNotFoundError:
            return None

    def new_token(self, vm_id: str) -> str:
        """Make, keep (0600) and return a fresh agent token for ``vm_id``."""
        token = secrets.token_urlsafe(32)
        _write_private(self._token_path(vm_id), token.encode(), 0o600)
        return token

    def forget(self, vm_id: str) -> None:
        self._record_path(vm_id).unlink(missing_ok=True)
        self._token_path(vm_id).unlink(missing_ok=True)
