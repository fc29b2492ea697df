"""Building the VM boot artifacts for tests: once per machine, shared by every test run."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import anyio

from guest_runtime.image.artifacts import build_vm_artifacts
from guest_runtime.image.rootfs import build_rootfs

TEMPLATE = "minimal"  # python3 and coreutils are all the tests need


def _why_not(tree_ready: bool) -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    if not tree_ready and (os.geteuid() != 0 or shutil.which("debootstrap") is None):
        return "building a root filesystem needs root and debootstrap (apt-get install debootstrap)"
    return None


def ensure_test_tree(cache: Path) -> Path:
    """The Debian tree in ``cache`` (the local sandbox's image root), built if missing."""
    tree = cache / f"rootfs-{TEMPLATE}"
    if (tree / "etc" / "projectvm-image").is_file():
        return tree
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        raise RuntimeError(
            "building a root filesystem needs root and debootstrap (apt-get install debootstrap)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (tree / "etc" / "projectvm-image").is_file():
            building = cache / f"rootfs-{TEMPLATE}.building"
            anyio.run(build_rootfs, building, TEMPLATE)
            building.rename(tree)
    return tree


def ensure_test_images(cache: Path) -> Path:
    """The artifacts directory in ``cache``, built if missing (serialised across processes)."""
    cache.mkdir(parents=True, exist_ok=True)
    tree = cache / f"rootfs-{TEMPLATE}"
    reason = _why_not((tree / "etc" / "projectvm-image").is_file())
    if reason:
        raise RuntimeError(reason)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)

        async def build() -> Path:
            if not (tree / "etc" / "projectvm-image").is_file():
                building = cache / f"rootfs-{TEMPLATE}.building"
                await build_rootfs(building, TEMPLATE)
                building.rename(tree)
            artifacts = await build_vm_artifacts(cache / "data", tree)
            return artifacts.directory

        return anyio.run(build)
