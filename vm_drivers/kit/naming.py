"""Names of VMs and of what backends make for them, derived from project ids."""

from __future__ import annotations

import hashlib
import re

from vm_drivers.errors import VMNotFound

__all__ = ["VM_PREFIX", "check_vm_id", "short_name", "vm_id_for"]

VM_PREFIX = "pvm-"
_VM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def vm_id_for(project_id: str) -> str:
    """The VM id of a project's VM: ``pvm-<project id>``."""
    vm_id = f"{VM_PREFIX}{project_id}"
    check_vm_id(vm_id)
    return vm_id


def check_vm_id(vm_id: str) -> None:
    """Refuse ids that could escape a directory or a name space (``../x``, ``a/b``)."""
    if not _VM_ID.match(vm_id) or ".." in vm_id:
        raise VMNotFound.of(vm_id, "not a valid VM id")


def short_name(vm_id: str, length: int, prefix: str = "pvm") -> str:
    """A deterministic name of at most ``length`` characters for backends with short name
    limits (network devices: 15; socket paths), unique enough by a hash of the VM id."""
    digest = hashlib.sha256(vm_id.encode()).hexdigest()
    room = length - len(prefix)
    if room < 6:
        raise ValueError(f"{length} characters leave no room for a unique name")
    return prefix + digest[:room]
