"""Per-project data disks: sparse ext4 images labelled ``pvm-data``, and their locks.

The guest mounts the disk by its label at ``/workspace``. Firecracker takes no lock on the
images it opens, so two VMs could corrupt one disk: :class:`DiskLock` holds an exclusive
``flock`` on the image while a VM uses it. The lock's descriptor is handed to the Firecracker
process too, so the lock lasts exactly as long as the VMM, also across a server restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

import anyio

from vm_drivers.errors import DriverUnavailable, VMCreationFailed, VMOperationFailed

__all__ = ["DATA_LABEL", "DiskLock", "create_data_disk"]

DATA_LABEL = "pvm-data"
MKFS_HINT = "install e2fsprogs (Debian/Ubuntu: apt-get install e2fsprogs)"


async def create_data_disk(path: Path, size_bytes: int) -> None:
    """Make a sparse ext4 image of ``size_bytes`` at ``path`` (replacing nothing)."""
    mkfs = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/sbin:/usr/sbin")
    if mkfs is None:
        raise DriverUnavailable("firecracker", "mkfs.ext4 was not found", MKFS_HINT)
    if await anyio.Path(path).exists():
        raise VMCreationFailed(
            f"a data disk already exists at {path}; destroy the VM it belongs to first"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as handle:
            handle.truncate(size_bytes)  # sparse: blocks are allocated as the guest writes
        result = await anyio.run_process(
            [
                mkfs,
                "-F",
                "-q",
                "-L",
                DATA_LABEL,
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                str(temporary),
            ],
            check=False,
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).decode(errors="replace").strip()
            raise VMCreationFailed(
                f"mkfs.ext4 could not format the data disk {path}: {detail}; check the data "
                "directory's filesystem has space"
            )
        temporary.replace(path)
    except OSError as err:
        raise VMCreationFailed(
            f"could not create the data disk {path}: {err}; check the data directory is "
            "writable and has space"
        ) from err
    finally:
        temporary.unlink(missing_ok=True)


class DiskLock:
    """An exclusive, non-blocking ``flock`` on a disk image; ``fd`` can be inherited."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def acquire(cls, path: Path) -> DiskLock:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise VMOperationFailed(
                f"the data disk {path} is missing; the VM's workspace is gone: destroy the VM "
                "and create it again"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise VMOperationFailed(
                f"the data disk {path} is in use by another process (another Firecracker of "
                "this VM, maybe left by an earlier server): stop that VM first"
            ) from None
        return cls(path, fd)

    @staticmethod
    def held(path: Path) -> bool:
        """Whether some process holds the lock right now."""
        try:
            DiskLock.acquire(path).release()
        except VMOperationFailed:
            return path.exists()
        return False

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
