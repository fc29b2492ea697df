"""The guest's initramfs: static busybox, the kernel modules it needs, and ``init``.

Written as a newc cpio in Python (deterministic: fixed owners and times, sorted entries), then
gzipped. The guest agent is not in it: :func:`agent_cpio` packs the current agent, with the
current ``init`` beside it, as a second, tiny archive that drivers append (the kernel unpacks
concatenated archives in order, a later file replacing an earlier one), so a new agent never
means rebuilding the image, and the init that starts the agent always speaks its flags.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from guest_runtime.image.kernel import (
    BASE_MODULES,
    NETWORK_MODULES,
    KernelFiles,
    module_bytes,
    module_load_order,
)

__all__ = [
    "AGENT_PATH",
    "CpioEntry",
    "agent_cpio",
    "boot_payload_digest",
    "build_initramfs",
    "init_script",
    "newc_archive",
]

AGENT_PATH = "projectvm/agent.pyz"  # where the agent lands in the initramfs
MODULE_LISTS = {"etc/pvm/modules": BASE_MODULES, "etc/pvm/modules-net": NETWORK_MODULES}
_MTIME = 1577836800  # 2020-01-01: fixed, so equal inputs give equal bytes


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int  # including the file type bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _header(entry: CpioEntry, inode: int) -> bytes:
    name = entry.name.encode() + b"\0"
    fields = [
        inode,
        entry.mode,
        0,  # uid
        0,  # gid
        2 if stat.S_ISDIR(entry.mode) else 1,
        _MTIME,
        len(entry.data),
        0,
        0,
        entry.rdev[0],
        entry.rdev[1],
        len(name),
        0,
    ]
    header = b"070701" + b"".join(b"%08X" % value for value in fields) + name
    return header + b"\0" * (-len(header) % 4)


def newc_archive(entries: Iterable[CpioEntry]) -> bytes:
    """A cpio archive in the "new ASCII" format the kernel unpacks."""
    out = io.BytesIO()
    for inode, entry in enumerate(entries, start=1):
        out.write(_header(entry, inode))
        out.write(entry.data)
        out.write(b"\0" * (-len(entry.data) % 4))
    out.write(_header(CpioEntry("TRAILER!!!", 0), 0))
    out.write(b"\0" * (-out.tell() % 512))
    return out.getvalue()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def init_script() -> bytes:
    """The guest's PID 1, a busybox shell script kept beside this module."""
    return (resources.files("guest_runtime") / "image" / "init.sh").read_bytes()


def _directories(paths: Iterable[str]) -> list[CpioEntry]:
    wanted: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            wanted.add("/".join(parts[:depth]))
    return [CpioEntry(name, stat.S_IFDIR | 0o755) for name in sorted(wanted)]


def build_initramfs(kernel: KernelFiles, busybox: Path) -> bytes:
    """The gzipped initramfs for ``kernel`` with the static ``busybox`` binary."""
    files: list[CpioEntry] = [
        CpioEntry("init", stat.S_IFREG | 0o755, init_script()),
        CpioEntry("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
    ]
    for list_name, wanted in MODULE_LISTS.items():
        lines = []
        for path in module_load_order(kernel.modules_dir, wanted):
            relative = path.relative_to(kernel.modules_dir).as_posix().split(".ko")[0] + ".ko"
            name = f"lib/modules/{kernel.version}/{relative}"
            if not any(entry.name == name for entry in files):
                files.append(CpioEntry(name, stat.S_IFREG | 0o644, module_bytes(path)))
            lines.append(f"/{name}\n")
        files.append(CpioEntry(list_name, stat.S_IFREG | 0o644, "".join(lines).encode()))
    mount_points = [
        CpioEntry(name, stat.S_IFDIR | 0o755)
        for name in ("dev", "proc", "sys", "newroot", "lower", "upper", "run", "tmp")
    ]
    devices = [
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
    ]
    names = [entry.name for entry in files]
    entries = {entry.name: entry for entry in [*_directories(names), *mount_points, *devices]}
    entries.update({entry.name: entry for entry in files})
    return _gzip(newc_archive(entries[name] for name in sorted(entries)))


def agent_cpio(zipapp: bytes) -> bytes:
    """A gzipped archive of the guest agent and the init that starts it, to append to the
    image's initramfs (replacing the image's own, possibly older, init)."""
    entries = [
        CpioEntry("init", stat.S_IFREG | 0o755, init_script()),
        CpioEntry("projectvm", stat.S_IFDIR | 0o755),
        CpioEntry(AGENT_PATH, stat.S_IFREG | 0o644, zipapp),
    ]
    return _gzip(newc_archive(entries))


def boot_payload_digest(agent_digest: str) -> str:
    """Names what :func:`agent_cpio` appends: this agent with this init."""
    return hashlib.sha256(agent_digest.encode() + init_script()).hexdigest()[:16]
