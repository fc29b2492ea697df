"""Whether Firecracker can run project VMs here, for ``projectvm doctor`` and ``auto``.

Cheap checks first (binary, version, ``/dev/kvm`` read-write, boot images); then the only
check that settles it: a **timed boot probe** — boot a throwaway VM with the real images and
wait for the agent's hello. ``/dev/kvm`` can exist, answer every ioctl, and still be unable to
run a guest (a nested or partial KVM: the kernel hangs, or the vCPU dies with
``KVM_EXIT_INTERNAL_ERROR``). The probe's verdict is cached on disk, keyed on what could change
it (Firecracker version, host kernel, KVM modules, images), so it runs once per change.
"""

from __future__ import annotations

import os
import platform
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from pydantic import BaseModel, ValidationError

from vm_drivers.base import Availability
from vm_drivers.errors import DriverError
from vm_drivers.firecracker.api import MINIMUM_VERSION, parse_version
from vm_drivers.firecracker.boot import IMAGES_HINT, BootRequest, release
from vm_drivers.firecracker.disks import create_data_disk
from vm_drivers.firecracker.launch import find_binary
from vm_drivers.firecracker.machine import INSTALL_HINT, BootFailed
from vm_drivers.firecracker.process import ConsoleLog
from vm_drivers.firecracker.records import runtime_key

if TYPE_CHECKING:
    from vm_drivers.firecracker.driver import FirecrackerDriver

__all__ = ["BootProbeResult", "Prober"]

PROBE_VM = "projectvm-boot-probe"
PROBE_DISK_BYTES = 64 * 1024 * 1024
PROBE_MEMORY_MB = 256
KVM_HINT = (
    "give the server's user read-write access to /dev/kvm (add it to the kvm group), and load "
    "the kvm_intel or kvm_amd module; in a VM, enable nested virtualization"
)


class BootProbeResult(BaseModel):
    """The cached verdict of one boot probe."""

    key: dict[str, str]
    usable: bool
    reason: str
    seconds: float
    checked_at: datetime


def _kvm_modules() -> str:
    found = [
        name for name in ("kvm_intel", "kvm_amd", "kvm_pvm") if Path("/sys/module", name).exists()
    ]
    return ",".join(found) or "none"


def _kvm_problem() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not read-writable by this user"
    return None


def _identity(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{path}:{stat.st_size}:{int(stat.st_mtime)}"


class Prober:
    """Availability of one firecracker driver; the boot probe runs once per cache key."""

    def __init__(self, driver: FirecrackerDriver) -> None:
        self.driver = driver
        self.cache_path = driver.root / "boot-probe.json"
        self._lock = anyio.Lock()
        self.last_failure = ""  # the full report of this process's last failed boot probe

    def _unusable(self, reason: str, details: dict[str, str]) -> Availability:
        return Availability(driver="firecracker", usable=False, reason=reason, details=details)

    async def probe(self) -> Availability:
        config = self.driver.config
        details: dict[str, str] = {}
        binary = find_binary(config.binary)
        if binary is None:
            return self._unusable(
                f"{config.binary!r} was not found on PATH; {INSTALL_HINT}", details
            )
        details["binary"] = binary
        result = await anyio.run_process([binary, "--version"], check=False)
        first_line = result.stdout.decode(errors="replace").strip().splitlines()[:1]
        try:
            version = parse_version(first_line[0] if first_line else "")
        except ValueError:
            return self._unusable(
                f"{binary} --version did not print a Firecracker version "
                f"({result.stderr.decode(errors='replace').strip()[:200]}); {INSTALL_HINT}",
                details,
            )
        details["version"] = ".".join(map(str, version))
        if version < MINIMUM_VERSION:
            return self._unusable(
                f"Firecracker {details['version']} is too old: the driver needs 1.8 or later; "
                + INSTALL_HINT,
                details,
            )
        details["kvm modules"] = _kvm_modules()
        kvm_problem = _kvm_problem()
        if kvm_problem is not None:
            return self._unusable(f"{kvm_problem}; {KVM_HINT}", details)
        missing = self.driver.images.missing()
        if missing:
            return self._unusable(
                "boot images are missing: " + ", ".join(missing) + "; " + IMAGES_HINT, details
            )
        verdict = await self.boot_probe(details["version"])
        details["boot probe"] = (
            f"{'passed' if verdict.usable else 'failed'} in {verdict.seconds:.1f}s "
            f"(checked {verdict.checked_at:%Y-%m-%d %H:%M} UTC)"
        )
        if not verdict.usable:
            return self._unusable(
                f"{verdict.reason}; Firecracker needs a host whose KVM can run guests (bare "
                "metal, or nested virtualization that works): use the qemu driver here",
                details,
            )
        return Availability(
            driver="firecracker",
            usable=True,
            reason=f"Firecracker {details['version']} boots guests here ({verdict.reason})",
            details=details,
        )

    def _cache_key(self, version: str) -> dict[str, str]:
        images = self.driver.images
        return {
            "firecracker": version,
            "host kernel": platform.release(),
            "kvm modules": _kvm_modules(),
            "kernel": _identity(images.kernel),
            "initramfs": _identity(images.initramfs),
            "rootfs": _identity(images.rootfs),
            "jailer": "yes" if self.driver.config.jailer is not None else "no",
        }

    async def boot_probe(self, version: str) -> BootProbeResult:
        """The cached verdict, or a fresh boot of a throwaway VM (bounded by probe_timeout_s)."""
        key = self._cache_key(version)
        async with self._lock:
            try:
                cached = BootProbeResult.model_validate_json(self.cache_path.read_bytes())
                if cached.key == key:
                    return cached
            except (OSError, ValidationError):
                pass
            began = anyio.current_time()
            usable, reason = await self._boot_once()
            verdict = BootProbeResult(
                key=key,
                usable=usable,
                reason=reason,
                seconds=anyio.current_time() - began,
                checked_at=datetime.now(UTC),
            )
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            self.cache_path.write_text(verdict.model_dump_json(indent=2))
            return verdict

    async def _boot_once(self) -> tuple[bool, str]:
        driver = self.driver
        directory = driver.root / "boot-probe"
        shutil.rmtree(directory, ignore_errors=True)
        disk = directory / "data.ext4"
        try:
            await create_data_disk(disk, PROBE_DISK_BYTES)
            request = BootRequest(
                vm_id=PROBE_VM,
                key=runtime_key(driver.context.instance_id, PROBE_VM),
                labels=driver.context.labels("boot-probe", PROBE_VM),
                vcpus=1,
                memory_mb=PROBE_MEMORY_MB,
                egress=False,
                disk=disk,
                console=ConsoleLog(directory / "console.log", 256 * 1024),
            )
            began = anyio.current_time()
            running = await driver.booter.cold_boot(
                request, boot_timeout_s=driver.config.probe_timeout_s
            )
            seconds = anyio.current_time() - began
            await release(running)
            return True, f"a test VM's agent said hello {seconds:.2f}s after spawn"
        except BootFailed as err:
            self.last_failure = str(err)
            return False, f"the boot probe failed: {err.cause}"
        except DriverError as err:
            self.last_failure = str(err)
            return False, f"the boot probe failed: {err}"
        finally:
            shutil.rmtree(directory, ignore_errors=True)
