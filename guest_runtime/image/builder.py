"""One rootfs tree, several images: the small interface between the tree and its outputs.

The tree (debootstrap, then apt) is built once per template and kept under
``DATA_DIR/images/trees/<template>``: the local sandbox can use it as its root, and each
:class:`ImageOutput` makes something from it — a Docker Engine image, the VM drivers' boot
artifacts (kernel, initramfs, ext4 root disk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from guest_runtime.image.artifacts import build_vm_artifacts, images_dir
from guest_runtime.image.rootfs import IMAGE_VERSION, Progress, build_rootfs

__all__ = ["ImageOutput", "VMImage", "build_image", "tree_is_current", "tree_path"]


class ImageOutput(Protocol):
    """Something made from a finished rootfs tree (an engine image, a disk image)."""

    description: str

    async def write(self, tree: Path, work_dir: Path, progress: Progress) -> str:
        """Make the output from ``tree`` (scratch space in ``work_dir``); say what was made."""
        ...


class VMImage:
    """The qemu and firecracker drivers' boot artifacts, under ``DATA_DIR/images``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.description = "VM boot artifacts (kernel, initramfs, ext4 root disk)"

    async def write(self, tree: Path, work_dir: Path, progress: Progress) -> str:
        artifacts = await build_vm_artifacts(self.data_dir, tree, progress)
        return f"VM image {artifacts.digest} in {artifacts.directory}"


def tree_path(data_dir: Path, template: str) -> Path:
    return images_dir(data_dir) / "trees" / template


def tree_is_current(tree: Path, template: str) -> bool:
    """Whether ``tree`` is a finished tree of ``template`` at this image version."""
    try:
        marker = (tree / "etc" / "projectvm-image").read_text()
    except OSError:
        return False
    return f"template={template}\n" in marker and f"version={IMAGE_VERSION}\n" in marker


async def build_image(
    data_dir: Path,
    template: str,
    outputs: list[ImageOutput],
    *,
    mirror: str | None = None,
    rebuild: bool = False,
    progress: Progress = lambda _: None,
) -> list[str]:
    """Build (or reuse) ``template``'s tree and write every output from it."""
    tree = tree_path(data_dir, template)
    if rebuild or not tree_is_current(tree, template):
        await build_rootfs(tree, template, mirror=mirror, progress=progress)
    else:
        progress(f"reusing the {template} root filesystem in {tree} (--rebuild to make it anew)")
    work = images_dir(data_dir) / "work"
    work.mkdir(parents=True, exist_ok=True)
    return [await output.write(tree, work, progress) for output in outputs]
