"""A workspace that is a filesystem of its own: a sparse ext4 image, loop-mounted.

Where the server can mount (root, loop devices, e2fsprogs), a project's workspace is an image
file sized by ``VMSpec.disk_gb``, mounted where the driver wants it (the local sandbox's
workspace directory; the directory a docker volume binds). The kernel then refuses a write past
the size with "No space left on device", whoever writes: a command, a detached process or the
guest agent. An image is made once, mounted again after a reboot, grown when the setting grows
(online where the server may, else while nothing uses it), and deleted with its VM.

Every function here blocks (it runs ``mount``, ``mkfs.ext4``, ``resize2fs``): call them in a
worker thread. A lock file next to the image serialises two servers sharing a data directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vm_drivers.errors import VMOperationFailed, VMResourceExhausted

__all__ = [
    "GIB",
    "MIN_DISK_BYTES",
    "DiskSupport",
    "WorkspaceDisk",
    "disk_bytes",
    "disk_support",
]

GIB = 1024**3
# ext4 needs some room for itself; below this a limit is kept by the server's guard alone.
MIN_DISK_BYTES = 4 * 1024 * 1024
TOOLS = ("mkfs.ext4", "resize2fs", "e2fsck", "debugfs", "mount", "umount", "losetup")
SETUP_HINT = (
    "run the server as root on a host with loop devices and e2fsprogs "
    "(apt-get install e2fsprogs mount)"
)
COMMAND_TIMEOUT_S = 120
DETACH_WAIT_S = 10.0


def disk_bytes(disk_gb: float) -> int:
    """The image size for a limit of ``disk_gb`` GiB: whole 4 KiB blocks, at least the minimum
    ext4 needs."""
    return max(MIN_DISK_BYTES, int(disk_gb * GIB) // 4096 * 4096)


@dataclass(frozen=True)
class DiskSupport:
    usable: bool
    reason: str


def _run(argv: list[str], ok: tuple[int, ...] = (0,)) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise VMOperationFailed(f"{argv[0]} could not run: {err}; {SETUP_HINT}") from err
    if done.returncode not in ok:
        detail = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        if "No space left" in detail:
            raise VMResourceExhausted(
                f"{' '.join(argv[:2])} failed: {detail}; free space on the host's data disk"
            )
        raise VMOperationFailed(f"{' '.join(argv[:2])} failed: {detail}")
    return done.stdout


@functools.cache
def disk_support() -> DiskSupport:
    """Whether workspace disks work here: tried once, for real, with a tiny image."""
    if os.geteuid() != 0:
        return DiskSupport(False, "the server is not root, so it cannot mount a disk image")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return DiskSupport(False, f"{', '.join(missing)} not found")
    if not Path("/dev/loop-control").exists():
        return DiskSupport(False, "no loop devices here (/dev/loop-control is missing)")
    with tempfile.TemporaryDirectory(prefix="projectvm-disk-probe-") as scratch:
        disk = WorkspaceDisk(Path(scratch) / "probe.ext4", Path(scratch) / "mnt")
        try:
            disk.ensure(MIN_DISK_BYTES, owner=None)
            disk.remove()
        except (VMOperationFailed, OSError) as err:
            with contextlib.suppress(VMOperationFailed, OSError):
                disk.unmount()
            return DiskSupport(False, f"a trial disk could not be made and mounted: {err}")
    return DiskSupport(True, "sparse ext4 images, loop-mounted")


@dataclass(frozen=True)
class _Mount:
    source: str  # the block device, e.g. /dev/loop3
    device: str  # major:minor


class WorkspaceDisk:
    """One workspace image at ``image``, mounted at ``mount_point``."""

    def __init__(self, image: Path, mount_point: Path) -> None:
        self.image = image
        self.mount_point = mount_point

    # -- what is there ------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.image.is_file()

    def size_bytes(self) -> int:
        return self.image.stat().st_size

    def mounted(self) -> bool:
        return self._mount() is not None

    def _mount(self) -> _Mount | None:
        """Our image's mount at the mount point; a mount of something else there is an error."""
        target = os.path.realpath(self.mount_point)
        found = None
        with open("/proc/self/mountinfo") as mountinfo:
            for line in mountinfo:
                fields = line.split()
                if _unescape(fields[4]) == target:
                    tail = fields[fields.index("-") + 1 :]
                    found = _Mount(source=tail[1], device=fields[2])  # the last one is on top
        if found is None:
            return None
        if _backing_file(found.source) != os.path.realpath(self.image):
            raise VMOperationFailed(
                f"{self.mount_point} has {found.source} mounted on it, not the workspace image "
                f"{self.image}; unmount it (umount {self.mount_point}) and start the VM again"
            )
        return found

    def _attached_loop(self) -> str | None:
        """A loop device already holding the image (mounted elsewhere, say by an engine)."""
        out = _run(["losetup", "--noheadings", "--output", "NAME", "-j", str(self.image)])
        names = out.split()
        return names[0] if names else None

    # -- changing it --------------------------------------------------------------------------

    def prepare(self, size: int, owner: tuple[int, int] | None) -> str | None:
        """Make the image if it is missing (its root owned by ``owner``, (uid, gid), if not
        None) and grow it to ``size`` if smaller, without mounting it; returns why it could
        not grow now, if it could not (it is in use)."""
        with self._locked():
            if not self.exists():
                self._make(size, owner)
            elif self.size_bytes() < size:
                return self._grow(size)
        return None

    def ensure(
        self, size: int, owner: tuple[int, int] | None, *, in_use: bool = True
    ) -> str | None:
        """``prepare``, then mount the image at the mount point if it is not. Growing a mounted
        disk needs CAP_SYS_RESOURCE, or unmounting it first, which only happens if it is not
        ``in_use``; returns why it could not grow now, if it could not."""
        with self._locked():
            if (
                self.exists()
                and self.size_bytes() < size
                and not in_use
                and not _can_resize_online()
            ):
                self._unmount()
                self._wait_detached()
        later = self.prepare(size, owner)
        with self._locked():
            self.mount_point.mkdir(parents=True, exist_ok=True)
            if self._mount() is None:
                self._mount_image()
        return later

    def _make(self, size: int, owner: tuple[int, int] | None) -> None:
        self.image.parent.mkdir(parents=True, exist_ok=True)
        building = self.image.with_name(f".{self.image.name}.{os.getpid()}.new")
        try:
            with building.open("wb") as handle:
                handle.truncate(size)
            options = "lazy_itable_init=1,lazy_journal_init=1"  # a new sparse file reads zeros
            if owner is not None:
                options += f",root_owner={owner[0]}:{owner[1]}"
            _run(["mkfs.ext4", "-F", "-q", "-m", "0", "-L", "pvm-workspace", "-E", options,
                  str(building)])  # fmt: skip
            # ext4's lost+found would be the first thing every listing shows.
            _run(["debugfs", "-w", "-R", "rmdir lost+found", str(building)])
            building.replace(self.image)
        finally:
            building.unlink(missing_ok=True)

    def _mount_image(self) -> None:
        options = "nosuid,nodev,noatime"
        loop = self._attached_loop()
        if loop is not None:
            # Never attach one image to two loop devices: two ext4 drivers on one disk would
            # corrupt it. Mount the device that already holds it.
            _run(["mount", "-t", "ext4", "-o", options, loop, str(self.mount_point)])
        else:
            _run(["mount", "-t", "ext4", "-o", f"loop,{options}", str(self.image),
                  str(self.mount_point)])  # fmt: skip

    def _grow(self, size: int) -> str | None:
        mount = self._mount()
        if mount is not None and _can_resize_online():
            os.truncate(self.image, size)
            _run(["losetup", "--set-capacity", mount.source])
            _run(["resize2fs", mount.source])
            return None
        if mount is not None or self._attached_loop() is not None:
            # Mounted (here without the right to resize it online, or in another mount
            # namespace, where resize2fs would take it for unmounted): it grows when free.
            return f"{self.image} is in use; it grows to {size} bytes when its VM next starts"
        os.truncate(self.image, size)
        _run(["e2fsck", "-f", "-p", str(self.image)], ok=(0, 1))
        _run(["resize2fs", str(self.image)])
        return None

    def unmount(self) -> None:
        """Unmount the image (and free its loop device); lazily if something still holds it."""
        with self._locked():
            self._unmount()

    def _unmount(self) -> None:
        if self._mount() is None:
            return
        try:
            _run(["umount", str(self.mount_point)])
        except VMOperationFailed:
            # A process of the VM is still exiting: detach now, the kernel finishes later.
            _run(["umount", "--lazy", str(self.mount_point)])

    def _wait_detached(self) -> None:
        """Give other users of the disk a moment to let go (an engine cleans a stopped
        container's volume mounts up after the stop returns); bounded, in a worker thread."""
        deadline = time.monotonic() + DETACH_WAIT_S
        while self._attached_loop() is not None and time.monotonic() < deadline:
            time.sleep(0.1)

    def remove(self) -> None:
        """Unmount and delete the image and the mount point (the workspace is gone)."""
        self.unmount()
        with self._locked():
            self.image.unlink(missing_ok=True)
        self._lock_path().unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.mount_point.rmdir()

    def usage(self) -> tuple[int, int]:
        """(bytes used, bytes in all) of the mounted filesystem."""
        stat = os.statvfs(self.mount_point)
        total = stat.f_blocks * stat.f_frsize
        return total - stat.f_bfree * stat.f_frsize, total

    # -- plumbing -----------------------------------------------------------------------------

    def _lock_path(self) -> Path:
        return self.image.with_name(f".{self.image.name}.lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        path = self._lock_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


def _can_resize_online() -> bool:
    """Growing a mounted ext4 needs CAP_SYS_RESOURCE (some containers drop it, even for root)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _backing_file(source: str) -> str | None:
    name = os.path.basename(source)
    try:
        text = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
    except OSError:
        return None
    return os.path.realpath(text.removesuffix(" (deleted)"))
