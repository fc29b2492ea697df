"""One JSON record per VM in a directory: saved atomically, listed, loaded, removed."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from vm_drivers.errors import VMNotFound, VMOperationFailed
from vm_drivers.kit.naming import check_vm_id

__all__ = ["RecordStore"]

R = TypeVar("R", bound=BaseModel)


class RecordStore(Generic[R]):
    """Records of type ``model`` under ``directory``, one per VM at ``layout`` (by default
    ``<vm_id>.json``; ``{vm_id}/record.json`` keeps each beside the VM's other files).

    A save is temp file + fsync + rename, so a crash leaves the old record or the new one;
    a corrupt record is reported, never silently replaced.
    """

    def __init__(
        self,
        directory: Path,
        model: type[R],
        key: Callable[[R], str],
        layout: str = "{vm_id}.json",
    ) -> None:
        self.directory = directory
        self._model = model
        self._key = key
        self._layout = layout

    def path(self, vm_id: str) -> Path:
        check_vm_id(vm_id)
        return self.directory / self._layout.format(vm_id=vm_id)

    def load(self, vm_id: str) -> R:
        path = self.path(vm_id)
        try:
            return self._model.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise VMNotFound.of(vm_id) from None
        except ValidationError as err:
            raise VMOperationFailed(
                f"the record of VM {vm_id} at {path} is corrupt: {err}; remove the file to "
                "forget the VM, or restore it from a backup"
            ) from err

    def exists(self, vm_id: str) -> bool:
        return self.path(vm_id).exists()

    def save(self, record: R) -> None:
        path = self.path(self._key(record))
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        try:
            with temporary.open("wb") as handle:
                handle.write(record.model_dump_json(indent=2).encode())
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def remove(self, vm_id: str) -> None:
        self.path(vm_id).unlink(missing_ok=True)

    def all(self) -> list[R]:
        """Every readable record, by VM id (corrupt ones are skipped: ``load`` reports them)."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.glob(self._layout.format(vm_id="*"))):
            try:
                found.append(self._model.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError):
                continue
        return found
