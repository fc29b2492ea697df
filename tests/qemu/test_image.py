"""The boot artifacts: what the kernel, initramfs and disks are made of, and their cache."""

from __future__ import annotations

import gzip
import json
import stat
from pathlib import Path

import anyio
import pytest

from guest_runtime.bundle import agent_zipapp
from guest_runtime.image.artifacts import load_vm_artifacts
from guest_runtime.image.disk import make_data_disk
from guest_runtime.image.initramfs import AGENT_PATH, CpioEntry, agent_cpio, newc_archive

pytestmark = pytest.mark.anyio


def read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """Names → (mode, data) of a newc archive (the reading side of the format)."""
    entries: dict[str, tuple[int, bytes]] = {}
    offset = 0
    while True:
        assert data[offset : offset + 6] == b"070701"
        fields = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_start = offset + 110
        name = data[name_start : name_start + name_size - 1].decode()
        body = name_start + name_size + (-(110 + name_size) % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data[body : body + size])
        offset = body + size + (-size % 4)


def test_a_newc_archive_round_trips_files_directories_and_devices() -> None:
    archive = newc_archive(
        [
            CpioEntry("dir", stat.S_IFDIR | 0o755),
            CpioEntry("dir/odd-size", stat.S_IFREG | 0o644, b"abcde"),
            CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        ]
    )
    assert len(archive) % 512 == 0
    entries = read_newc(archive)
    assert entries["dir/odd-size"] == (stat.S_IFREG | 0o644, b"abcde")
    assert stat.S_ISDIR(entries["dir"][0])
    assert stat.S_ISCHR(entries["dev/console"][0])


def test_the_agent_archive_carries_the_current_agent() -> None:
    entries = read_newc(gzip.decompress(agent_cpio(agent_zipapp())))
    assert entries[AGENT_PATH][1] == agent_zipapp()


def test_the_initramfs_holds_init_busybox_and_modules_in_load_order(qemu_images: Path) -> None:
    artifacts = load_vm_artifacts(qemu_images)
    entries = read_newc(gzip.decompress(artifacts.initramfs.read_bytes()))
    assert entries["init"][1].startswith(b"#!/bin/busybox sh")
    assert entries["bin/busybox"][1].startswith(b"\x7fELF")
    order = entries["etc/pvm/modules"][1].decode().split()
    names = [Path(path).name for path in order]
    assert names.index("virtio_ring.ko") < names.index("virtio.ko") < names.index("virtio_blk.ko")
    assert names.index("vsock.ko") < names.index("vmw_vsock_virtio_transport.ko")
    assert all(path.lstrip("/") in entries for path in order)


def test_the_kernel_comes_as_bzimage_and_elf_with_a_manifest(qemu_images: Path) -> None:
    artifacts = load_vm_artifacts(qemu_images)
    assert artifacts.kernel_bzimage.read_bytes()[0x202:0x206] == b"HdrS"
    with artifacts.kernel_vmlinux.open("rb") as handle:
        assert handle.read(4) == b"\x7fELF"
    manifest = json.loads((qemu_images / "manifest.json").read_text())
    assert manifest["digest"] == artifacts.digest == qemu_images.resolve().name
    for name, facts in manifest["files"].items():
        assert (qemu_images / name).stat().st_size == facts["size"]
        assert len(facts["sha256"]) == 64


async def test_a_data_disk_is_sparse_labelled_and_made_quickly(tmp_path: Path) -> None:
    target = tmp_path / "data.ext4"
    with anyio.fail_after(10):
        await make_data_disk(target, 4)
    info = target.stat()
    assert info.st_size == 4 * 2**30
    assert info.st_blocks * 512 < 64 * 2**20  # lazy init: a few MB really written
    result = await anyio.run_process(["blkid", "-o", "value", "-s", "LABEL", str(target)])
    assert result.stdout.strip() == b"pvm-data"
