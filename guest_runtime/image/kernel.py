"""The guest kernel: Debian's cloud kernel, as a bzImage (QEMU), an ELF ``vmlinux``
(Firecracker) and the few modules the guest's init loads.

The bzImage's payload is a compressed ELF: its offset is in the setup header (``setup_sects`` at
0x1f1, ``payload_offset`` at 0x248) and Debian compresses it with LZ4 in the legacy frame, which
the ``lz4`` tool (Debian's ``lz4`` package) decompresses; gzip and xz payloads are handled with
the standard library.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio

from guest_runtime.image.debs import DebFetchError, fetch_deb, resolve_dependency

__all__ = [
    "BASE_MODULES",
    "NETWORK_MODULES",
    "KernelBuildError",
    "KernelFiles",
    "extract_vmlinux",
    "fetch_kernel",
    "module_load_order",
]

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
# What the guest needs, by module name; dependencies are added in load order.
BASE_MODULES = (
    "virtio_mmio",  # virtio devices of microvm and Firecracker, found through ACPI
    "virtio_blk",
    "virtio_console",  # QEMU's virtio-serial channel
    "vmw_vsock_virtio_transport",  # the vsock channel (Firecracker, vhost-vsock)
    "virtio-rng",
    "overlay",  # a writable (tmpfs) layer over the read-only root disk
)
NETWORK_MODULES = ("virtio_net",)

Progress = Callable[[str], None]


class KernelBuildError(RuntimeError):
    """The kernel could not be fetched or unpacked."""


@dataclass(frozen=True)
class KernelFiles:
    version: str  # the kernel release, e.g. 6.1.0-57-cloud-amd64
    package_version: str
    bzimage: Path
    modules_dir: Path  # .../lib/modules/<release>


async def fetch_kernel(cache_dir: Path, progress: Progress = lambda _: None) -> KernelFiles:
    """Download and unpack the current Debian cloud kernel into ``cache_dir`` (reused)."""
    try:
        package = await resolve_dependency(KERNEL_METAPACKAGE, "linux-image-")
        progress(f"fetching {package}")
        deb = await fetch_deb(package, cache_dir)
    except DebFetchError as err:
        raise KernelBuildError(f"could not fetch the guest kernel: {err}") from err
    release = package.removeprefix("linux-image-")
    bzimage = deb.root / "boot" / f"vmlinuz-{release}"
    modules_dir = deb.root / "lib" / "modules" / release
    if not bzimage.is_file() or not modules_dir.is_dir():
        raise KernelBuildError(
            f"{package} has no boot/vmlinuz-{release} or lib/modules/{release}; the package "
            "layout changed, report it"
        )
    return KernelFiles(release, deb.version, bzimage, modules_dir)


# -- vmlinux ----------------------------------------------------------------------------------

LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
GZIP_MAGIC = b"\x1f\x8b\x08"
XZ_MAGIC = b"\xfd7zXZ\x00"


def _payload(bzimage: bytes) -> bytes:
    if bzimage[0x202:0x206] != b"HdrS":
        raise KernelBuildError("not a bzImage: no HdrS setup header at 0x202")
    setup_sects = bzimage[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    return bzimage[start : start + payload_length]


async def extract_vmlinux(bzimage: Path, target: Path) -> Path:
    """Write the uncompressed ELF kernel inside ``bzimage`` to ``target``."""
    payload = _payload(await anyio.Path(bzimage).read_bytes())
    if payload.startswith(LZ4_LEGACY_MAGIC):
        lz4 = shutil.which("lz4")
        if lz4 is None:
            raise KernelBuildError(
                "the kernel is LZ4-compressed and the lz4 tool is missing; install it "
                "(apt-get install lz4)"
            )
        result = await anyio.run_process([lz4, "-dc"], input=payload, check=False)
        # The payload carries trailing bytes (the size) after the last block: lz4 decodes all
        # blocks and then complains; what it wrote is the kernel.
        elf = result.stdout
    elif payload.startswith(GZIP_MAGIC):
        elf = await anyio.to_thread.run_sync(gzip.decompress, payload)
    elif payload.startswith(XZ_MAGIC):
        elf = await anyio.to_thread.run_sync(lzma.decompress, payload)
    else:
        raise KernelBuildError(
            f"unknown kernel compression (magic {payload[:6].hex()}); only LZ4, gzip and xz "
            "are supported"
        )
    if not elf.startswith(b"\x7fELF"):
        raise KernelBuildError(f"decompressing {bzimage.name} gave no ELF image ({len(elf)} bytes)")
    await anyio.Path(target).write_bytes(elf)
    return target


# -- modules ----------------------------------------------------------------------------------


def _modinfo_depends(module: Path) -> list[str]:
    """The ``depends=`` field of a module's ``.modinfo`` ELF section."""
    data = module.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise KernelBuildError(f"{module} is not a 64-bit ELF module")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, base)
        return name, offset, size

    _, names_offset, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        end = data.index(b"\0", names_offset + name)
        if data[names_offset + name : end] == b".modinfo":
            for field in data[offset : offset + size].split(b"\0"):
                if field.startswith(b"depends="):
                    value = field.removeprefix(b"depends=").decode()
                    return [name for name in value.split(",") if name]
            return []
    return []


def _canonical(name: str) -> str:
    return name.replace("-", "_")


def module_load_order(modules_dir: Path, wanted: Iterable[str]) -> list[Path]:
    """The module files for ``wanted`` and everything they depend on, dependencies first.

    Names built into the kernel (``modules.builtin``) need no file and are skipped.
    """
    files = {_canonical(path.name.split(".ko")[0]): path for path in modules_dir.rglob("*.ko*")}
    builtin = set()
    builtin_list = modules_dir / "modules.builtin"
    if builtin_list.is_file():
        for line in builtin_list.read_text().splitlines():
            builtin.add(_canonical(Path(line).name.split(".ko")[0]))
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        key = _canonical(name)
        if key in seen or key in builtin:
            return
        seen.add(key)
        path = files.get(key)
        if path is None:
            raise KernelBuildError(f"the kernel has no module {name!r} (not built in either)")
        for dependency in _modinfo_depends(path):
            visit(dependency)
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def module_bytes(path: Path) -> bytes:
    """A module's contents, decompressed if the package ships it compressed."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko"):
        return data
    raise KernelBuildError(f"{path.name}: unsupported module compression (only .ko, .xz, .gz)")
