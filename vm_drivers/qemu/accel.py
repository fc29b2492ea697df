"""Choosing QEMU's accelerator: KVM only where a guest really boots on it, TCG otherwise.

``/dev/kvm`` being present and accepting ioctls proves little (nested PVM here: every KVM call
succeeds, yet the guest hangs in its setup code), so the only proof is a timed boot of the real
kernel and initramfs with ``pvm.probe=1``, whose init prints a marker and resets at once. The
verdict is cached beside the boot artifacts, keyed on what could change it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from vm_drivers.qemu.process import kill, spawn, wait_exit

__all__ = ["PROBE_MARKER", "AccelChoice", "choose_accel", "tsc_khz"]

PROBE_MARKER = b"PVM-PROBE-OK"
CACHE_FILE = "kvm-probe.json"


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    reason: str


def tsc_khz() -> int | None:
    """The host TSC rate in kHz (TCG guests run their TSC at it), if the host says."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    mhz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.MULTILINE)
    if flags and mhz and {"constant_tsc", "tsc_known_freq"} <= set(flags.group(1).split()):
        return round(float(mhz.group(1)) * 1000)
    return None


def _kvm_unusable_cheaply() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user (join the kvm group)"
    return None


def _cache_key(qemu: str, kernel: Path) -> str:
    modules = sorted(
        m for m in ("kvm_intel", "kvm_amd", "kvm_pvm") if Path(f"/sys/module/{m}").exists()
    )
    stat = kernel.stat()
    facts = [platform.release(), ",".join(modules), qemu, str(stat.st_size), str(stat.st_mtime_ns)]
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


async def _boot_probe(qemu: str, kernel: Path, initramfs: Path, timeout: float) -> str | None:
    """None if a KVM guest reached init within ``timeout``; else why not."""
    with tempfile.TemporaryDirectory(prefix="pvm-kvm-probe-") as scratch:
        console = Path(scratch) / "console.log"
        argv = [
            qemu,
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=off",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-serial",
            f"file:{console}",
            "-kernel",
            str(kernel),
            "-initrd",
            str(initramfs),
            "-append",
            "console=ttyS0 reboot=t panic=-1 pvm.probe=1",
        ]
        pid = spawn(argv, log=Path(scratch) / "qemu.log")
        exited = await wait_exit(pid, timeout)
        if not exited:
            kill(pid)
            await wait_exit(pid, 5)
        output = console.read_bytes() if console.exists() else b""
        if PROBE_MARKER in output:
            return None
        log = (Path(scratch) / "qemu.log").read_text(errors="replace").strip()
        if exited:
            return (
                f"QEMU with KVM exited before the guest reached init: {log[-300:] or 'no output'}"
            )
        return f"a KVM guest did not reach init within {timeout:g}s (nested or partial KVM)"


async def choose_accel(
    setting: str,
    qemu: str,
    kernel: Path,
    initramfs: Path,
    cache_dir: Path,
    probe_timeout: float,
) -> AccelChoice:
    """The accelerator for ``setting`` ("auto", "kvm" or "tcg"), and why."""
    if setting == "tcg":
        return AccelChoice("tcg", "TCG (software emulation) as configured")
    if setting == "kvm":
        return AccelChoice("kvm", "KVM as configured (not probed)")
    cheap = _kvm_unusable_cheaply()
    if cheap is not None:
        return AccelChoice("tcg", f"TCG: {cheap}")
    resolved = shutil.which(qemu) or qemu
    key = _cache_key(resolved, kernel)
    cache = cache_dir / CACHE_FILE
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return AccelChoice(cached["accel"], cached["reason"] + " (cached probe)")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    failure = await _boot_probe(resolved, kernel, initramfs, probe_timeout)
    if failure is None:
        choice = AccelChoice("kvm", "KVM: a probe guest booted to init")
    else:
        choice = AccelChoice("tcg", f"TCG: KVM is present but unusable ({failure})")
    try:
        cache.write_text(json.dumps({"key": key, **asdict(choice)}) + "\n")
    except OSError:
        pass  # read-only artifacts: probe again next time
    return choice
