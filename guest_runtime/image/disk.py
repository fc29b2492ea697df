"""ext4 disk images made from user space: no mount, no loop device, no root needed.

The root disk is the debootstrap tree packed with ``mkfs.ext4 -d`` into a sparse file, shared
read-only by every VM. A project's data disk is an empty sparse ext4 file sized in GB, so the
project's storage limit is a filesystem limit; lazy inode-table and journal initialisation make
it take a few milliseconds and a few MB whatever its size.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio

__all__ = [
    "DATA_LABEL",
    "ROOT_LABEL",
    "DiskError",
    "grow_data_disk",
    "make_data_disk",
    "make_root_disk",
    "tree_size",
]

ROOT_LABEL = "pvm-root"
DATA_LABEL = "pvm-data"
# Fixed identity and time make equal trees give equal root images (content-addressed cache).
_ROOT_UUID = "7c0f1e2a-5b0e-4b8f-9d1e-70726f6a6576"
_HASH_SEED = "5e1f7a0c-3d2b-4c9e-8a6f-70766d726f6f"
_FAKE_TIME = "1577836800"


class DiskError(RuntimeError):
    """An ext4 image could not be made."""


def _mkfs() -> str:
    found = shutil.which("mkfs.ext4") or shutil.which("mke2fs")
    if found is None:
        raise DiskError("mkfs.ext4 is not installed; install e2fsprogs (apt-get install e2fsprogs)")
    return found


async def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    result = await anyio.run_process(argv, check=False, env=env)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).decode(errors="replace").strip()
        raise DiskError(f"`{' '.join(argv)}` failed with status {result.returncode}: {detail}")


def tree_size(tree: Path) -> int:
    """Bytes a directory tree occupies (apparent sizes, hard links counted once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for directory, dirs, files in os.walk(tree):
        for name in dirs + files:
            info = os.lstat(os.path.join(directory, name))
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            total += info.st_size
    return total


async def make_root_disk(tree: Path, target: Path) -> Path:
    """Pack ``tree`` into a new ext4 image at ``target`` labelled pvm-root (sized to fit)."""
    used = await anyio.to_thread.run_sync(tree_size, tree)
    # Room for metadata and small-file slack, then whole MiB.
    size_mib = int(used * 1.3 / 2**20) + 128
    await anyio.Path(target).unlink(missing_ok=True)
    with open(target, "wb") as handle:  # noqa: ASYNC230 - creating an empty file
        handle.truncate(size_mib * 2**20)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": _FAKE_TIME}
    try:
        await _run(
            [
                _mkfs(),
                "-F",
                "-q",
                "-t",
                "ext4",
                "-L",
                ROOT_LABEL,
                "-U",
                _ROOT_UUID,
                "-E",
                f"hash_seed={_HASH_SEED},root_owner=0:0",
                "-m",
                "0",
                "-d",
                str(tree),
                str(target),
            ],
            env=env,
        )
    except DiskError:
        await anyio.Path(target).unlink(missing_ok=True)
        raise
    return target


async def make_data_disk(target: Path, size_gb: float) -> Path:
    """A new, empty sparse ext4 image of ``size_gb`` GB at ``target`` labelled pvm-data."""
    if size_gb <= 0:
        raise DiskError(f"a data disk needs a positive size, not {size_gb} GB")
    size = int(size_gb * 2**30) // 4096 * 4096
    temporary = target.with_name(target.name + ".new")
    with open(temporary, "wb") as handle:  # noqa: ASYNC230 - creating an empty file
        handle.truncate(size)
    try:
        await _run(
            [
                _mkfs(),
                "-F",
                "-q",
                "-t",
                "ext4",
                "-L",
                DATA_LABEL,
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
                str(temporary),
            ]
        )
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


async def grow_data_disk(target: Path, size_gb: float) -> bool:
    """Grow the (unused, not mounted) data disk to ``size_gb`` GB; False if it is that big.

    Never shrinks: a smaller limit would lose data. Checks the filesystem first, as resize2fs
    requires.
    """
    size = int(size_gb * 2**30) // 4096 * 4096
    if size <= (await anyio.Path(target).stat()).st_size:
        return False
    e2fsck = shutil.which("e2fsck")
    resize2fs = shutil.which("resize2fs")
    if e2fsck is None or resize2fs is None:
        raise DiskError("e2fsck and resize2fs are needed; install e2fsprogs")
    result = await anyio.run_process([e2fsck, "-f", "-y", "-q", str(target)], check=False)
    if result.returncode >= 4:  # 1 and 2 mean "errors corrected"
        raise DiskError(
            f"the data disk {target} has errors e2fsck could not fix: "
            f"{result.stdout.decode(errors='replace')[-500:]}"
        )
    with open(target, "r+b") as handle:  # noqa: ASYNC230 - a metadata-only change
        handle.truncate(size)
    await _run([resize2fs, str(target)])
    return True
