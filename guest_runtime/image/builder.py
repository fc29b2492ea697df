"""One rootfs tree, several images: the small interface between the tree and its outputs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

import anyio

from guest_runtime.image.rootfs import Progress, build_rootfs

__all__ = ["ImageOutput", "build_image"]


class ImageOutput(Protocol):
    """Something made from a finished rootfs tree (an engine image, a disk image)."""

    description: str

    async def write(self, tree: Path, work_dir: Path, progress: Progress) -> str:
        """Make the output from ``tree`` (scratch space in ``work_dir``); say what was made."""
        ...


async def build_image(
    template: str,
    outputs: list[ImageOutput],
    work_dir: Path,
    *,
    mirror: str | None = None,
    progress: Progress = lambda _: None,
    keep: bool = False,
) -> list[str]:
    """Build ``template``'s tree in ``work_dir`` and write every output from it."""
    work = work_dir / template
    tree = work / "rootfs"
    try:
        await build_rootfs(tree, template, mirror=mirror, progress=progress)
        return [await output.write(tree, work, progress) for output in outputs]
    finally:
        if not keep:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(work, ignore_errors=True))
