"""Building the VM boot artifacts for tests: once per machine, shared by every test run."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import anyio

from guest_runtime.image.artifacts import current_artifacts
from guest_runtime.image.builder import VMImage, build_image, tree_is_current, tree_path

TEMPLATE = "minimal"  # python3 and coreutils are all the tests need


def _why_not(tree_ready: bool) -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    if not tree_ready and (os.geteuid() != 0 or shutil.which("debootstrap") is None):
        return "building a root filesystem needs root and debootstrap (apt-get install debootstrap)"
    return None


def ensure_test_tree(cache: Path) -> Path:
    """The Debian tree in ``cache`` (the local sandbox's image root), built if missing, where
    `projectvm image build --template minimal` keeps it."""
    data_dir = cache / "data"
    tree = tree_path(data_dir, TEMPLATE)
    if tree_is_current(tree, TEMPLATE):
        return tree
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        raise RuntimeError(
            "building a root filesystem needs root and debootstrap (apt-get install debootstrap)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tree_is_current(tree, TEMPLATE):
            anyio.run(build_image, data_dir, TEMPLATE, [])
    return tree


def ensure_test_images(cache: Path) -> Path:
    """The artifacts directory in ``cache``, built if missing (serialised across processes)."""
    cache.mkdir(parents=True, exist_ok=True)
    data_dir = cache / "data"
    tree = tree_path(data_dir, TEMPLATE)
    reason = _why_not(tree_is_current(tree, TEMPLATE))
    if reason:
        raise RuntimeError(reason)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)

        async def build() -> Path:
            # The product's own path: `projectvm image build --template minimal --for vm`.
            await build_image(data_dir, TEMPLATE, [VMImage(data_dir)])
            return current_artifacts(data_dir).directory

        return anyio.run(build)
