"""Boot artifacts of a project VM, built once and cached by content hash.

``build_vm_artifacts`` turns a root filesystem tree (from :mod:`guest_runtime.image.rootfs`)
into what a VMM boots: the kernel as a bzImage (QEMU) and an ELF vmlinux (Firecracker), the
initramfs, and the read-only root disk. They live in ``DATA_DIR/images/<digest>/`` with a
``manifest.json`` of each file's size and sha256; ``DATA_DIR/images/current`` points at the
newest. Building again from the same inputs (kernel and busybox versions, init, modules, tree)
finds the cached set and returns at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from guest_runtime.image.debs import DebFetchError, fetch_deb
from guest_runtime.image.disk import make_root_disk
from guest_runtime.image.initramfs import build_initramfs
from guest_runtime.image.kernel import extract_vmlinux, fetch_kernel
from guest_runtime.image.rootfs import build_rootfs

__all__ = [
    "ArtifactsError",
    "VMArtifacts",
    "build_vm_artifacts",
    "build_vm_image",
    "current_artifacts",
    "images_dir",
    "load_vm_artifacts",
]

# Bump when the layout of the artifacts changes in a way their inputs do not show.
LAYOUT_VERSION = "1"
MANIFEST = "manifest.json"
FILES = {
    "kernel_bzimage": "vmlinuz",
    "kernel_vmlinux": "vmlinux",
    "initramfs": "initramfs.img",
    "rootfs": "rootfs.ext4",
}

Progress = Callable[[str], None]


class ArtifactsError(RuntimeError):
    """The boot artifacts are missing, incomplete or could not be built."""


@dataclass(frozen=True)
class VMArtifacts:
    kernel_bzimage: Path
    kernel_vmlinux: Path
    initramfs: Path  # without the guest agent: drivers append it (see initramfs.agent_cpio)
    rootfs: Path
    digest: str
    kernel_release: str = ""

    @property
    def directory(self) -> Path:
        return self.rootfs.parent


def images_dir(data_dir: Path) -> Path:
    return data_dir / "images"


def load_vm_artifacts(directory: Path) -> VMArtifacts:
    """The artifacts in ``directory``, checked against its manifest (sizes only: fast)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = manifest["files"]
        for name in FILES.values():
            if (directory / name).stat().st_size != files[name]["size"]:
                raise ArtifactsError(
                    f"{directory / name} does not match its manifest; rebuild the VM image"
                )
        return VMArtifacts(
            **{field: directory / name for field, name in FILES.items()},
            digest=str(manifest["digest"]),
            kernel_release=str(manifest.get("kernel_release", "")),
        )
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ArtifactsError(
            f"no usable VM boot artifacts in {directory} ({err}); build them with "
            "`projectvm image build`"
        ) from err


def current_artifacts(data_dir: Path) -> VMArtifacts:
    """The artifacts most recently built into ``data_dir``."""
    return load_vm_artifacts(images_dir(data_dir) / "current")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_fingerprint(tree: Path) -> str:
    """Cheap identity of a tree: names, sizes and mtimes (not contents)."""
    digest = hashlib.sha256()
    for directory, dirs, files in os.walk(tree):
        dirs.sort()
        for name in sorted(files):
            info = os.lstat(os.path.join(directory, name))
            relative = os.path.relpath(os.path.join(directory, name), tree)
            digest.update(f"{relative}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _point_current(images: Path, digest: str) -> None:
    link = images / "current"
    temporary = images / f".current.{secrets.token_hex(4)}"
    temporary.symlink_to(digest)
    temporary.replace(link)


async def build_vm_artifacts(
    data_dir: Path, rootfs_tree: Path, progress: Progress = lambda _: None
) -> VMArtifacts:
    """Build (or find cached) boot artifacts for ``rootfs_tree`` under ``data_dir/images``."""
    if not (rootfs_tree / "usr" / "bin" / "python3").exists():
        raise ArtifactsError(
            f"{rootfs_tree} is not a root filesystem with python3; build one with "
            "guest_runtime.image.rootfs.build_rootfs"
        )
    images = images_dir(data_dir)
    cache = images / "cache"
    kernel = await fetch_kernel(cache / "debs", progress)
    try:
        busybox_deb = await fetch_deb("busybox-static", cache / "debs")
    except DebFetchError as err:
        raise ArtifactsError(f"could not fetch busybox: {err}") from err
    busybox = busybox_deb.root / "bin" / "busybox"
    initramfs = await anyio.to_thread.run_sync(build_initramfs, kernel, busybox)
    fingerprint = await anyio.to_thread.run_sync(_tree_fingerprint, rootfs_tree)
    inputs = hashlib.sha256(
        "\n".join(
            [
                LAYOUT_VERSION,
                kernel.package_version,
                busybox_deb.version,
                hashlib.sha256(initramfs).hexdigest(),
                fingerprint,
            ]
        ).encode()
    ).hexdigest()[:32]
    marker = cache / "inputs" / inputs
    if marker.is_file():
        try:
            found = load_vm_artifacts(images / marker.read_text().strip())
        except ArtifactsError:
            pass
        else:
            _point_current(images, found.digest)
            progress(f"VM image {found.digest} is up to date")
            return found
    staging = images / f".staging-{secrets.token_hex(4)}"
    staging.mkdir(parents=True)
    try:
        progress(f"building the VM image from {rootfs_tree}")
        shutil.copyfile(kernel.bzimage, staging / FILES["kernel_bzimage"])
        await extract_vmlinux(kernel.bzimage, staging / FILES["kernel_vmlinux"])
        (staging / FILES["initramfs"]).write_bytes(initramfs)
        progress("packing the root disk (mkfs.ext4 -d)")
        await make_root_disk(rootfs_tree, staging / FILES["rootfs"])
        files = {}
        for name in FILES.values():
            path = staging / name
            files[name] = {
                "size": path.stat().st_size,
                "sha256": await anyio.to_thread.run_sync(_sha256, path),
            }
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        manifest = {
            "digest": digest,
            "files": files,
            "kernel_release": kernel.version,
            "kernel_package": kernel.package_version,
            "busybox": busybox_deb.version,
            "rootfs_tree": str(rootfs_tree),
            "layout": LAYOUT_VERSION,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        target = images / digest
        if target.exists():
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(digest + "\n")
    _point_current(images, digest)
    artifacts = load_vm_artifacts(target)
    progress(f"VM image {digest} ready in {target}")
    return artifacts


async def build_vm_image(
    data_dir: Path, template: str = "runtime", progress: Progress = lambda _: None
) -> VMArtifacts:
    """The whole pipeline: a Debian tree for ``template`` (debootstrap, needs root), then
    :func:`build_vm_artifacts`. The tree is kept in ``DATA_DIR/images/trees/<template>``."""
    tree = images_dir(data_dir) / "trees" / template
    await build_rootfs(tree, template, progress=progress)
    return await build_vm_artifacts(data_dir, tree, progress)
