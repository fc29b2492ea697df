"""Test helper: a real x86_64 guest kernel as Firecracker wants it (an uncompressed ELF).

Debian's cloud kernel package is fetched with apt (``apt-get download``), unpacked with
``dpkg-deb -x``, and the ELF ``vmlinux`` is cut out of the bzImage: the compressed payload
starts at ``(setup_sects + 1) * 512 + payload_offset`` (setup header fields at 0x1f1 and 0x248)
and is LZ4 legacy-framed for this kernel. The product builds its own kernels; this is only so
the tests boot Firecracker with a real one.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

__all__ = ["KernelUnavailable", "fetch_debian_cloud_vmlinux", "vmlinux_from_bzimage"]

PACKAGE = "linux-image-cloud-amd64"
ELF_MAGIC = b"\x7fELF"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"


class KernelUnavailable(RuntimeError):
    """No kernel could be had here; the message says why (the tests skip with it)."""


def _run(argv: list[str], cwd: Path) -> str:
    if shutil.which(argv[0]) is None:
        raise KernelUnavailable(f"{argv[0]} is not installed")
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise KernelUnavailable(f"`{' '.join(argv)}` failed: {result.stderr.strip()[-300:]}")
    return result.stdout


def vmlinux_from_bzimage(bzimage: Path, target: Path) -> Path:
    """Write the ELF inside ``bzimage`` to ``target`` (needs the ``lz4`` command)."""
    data = bzimage.read_bytes()
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = data[start : start + payload_length]
    if not payload.startswith(LZ4_LEGACY_MAGIC):
        raise KernelUnavailable(f"{bzimage.name}'s payload is not LZ4 ({payload[:4].hex()})")
    compressed = target.with_suffix(".lz4")
    compressed.write_bytes(payload)
    _run(["lz4", "-d", "-f", "-q", str(compressed), str(target)], target.parent)
    compressed.unlink()
    if not target.read_bytes()[:4] == ELF_MAGIC:
        raise KernelUnavailable(f"{target} is not an ELF after decompression")
    return target


def fetch_debian_cloud_vmlinux(cache: Path) -> Path:
    """``cache/vmlinux`` from Debian's current cloud kernel package, fetched once."""
    target = cache / "vmlinux"
    if target.is_file() and target.read_bytes()[:4] == ELF_MAGIC:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    depends = _run(["apt-cache", "depends", PACKAGE], cache)
    names = [
        line.split(":", 1)[1].strip()
        for line in depends.splitlines()
        if line.strip().startswith("Depends:") and "linux-image-" in line
    ]
    if not names:
        raise KernelUnavailable(f"apt knows no package {PACKAGE} depends on (apt-get update?)")
    for old in cache.glob("*.deb"):
        old.unlink()
    _run(["apt-get", "download", "-q", names[0]], cache)
    [package] = cache.glob("*.deb")
    unpacked = cache / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    _run(["dpkg-deb", "-x", str(package), str(unpacked)], cache)
    [bzimage] = (unpacked / "boot").glob("vmlinuz-*")
    vmlinux_from_bzimage(bzimage, cache / "vmlinux.tmp").replace(target)
    shutil.rmtree(unpacked, ignore_errors=True)
    package.unlink()
    return target
