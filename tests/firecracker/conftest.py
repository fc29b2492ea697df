"""The firecracker driver's tests: drivers on the real binary, or on fake-firecracker.

The binaries, the kernel and the images are session fixtures of ``tests.fixtures.firecracker``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.fixtures.firecracker import TEST_BOOT_TIMEOUT_S
from vm_drivers.base import DriverContext
from vm_drivers.config import FirecrackerDriverConfig
from vm_drivers.firecracker.api import ApiExchange
from vm_drivers.firecracker.driver import FirecrackerDriver


@pytest.fixture
def requires_kvm() -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is missing or not read-writable: Firecracker cannot start a VM")


@dataclass
class DriverFactory:
    """Builds firecracker drivers on the real binary; records every API exchange they make."""

    binary: Path
    images: Path
    data_dir: Path
    exchanges: list[ApiExchange]
    built: list[FirecrackerDriver]

    def config(self, **overrides: Any) -> FirecrackerDriverConfig:
        values: dict[str, Any] = {
            "binary": str(self.binary),
            "images_dir": self.images,
            "boot_timeout_s": TEST_BOOT_TIMEOUT_S,
            "probe_timeout_s": TEST_BOOT_TIMEOUT_S,
            "memory_mb": 256,
            "vcpus": 1,
            "stop_timeout_s": 2,
        }
        values.update(overrides)
        return FirecrackerDriverConfig.model_validate(values)

    async def destroy_all(self) -> None:
        for driver in self.built:
            with anyio.fail_after(60):
                for info in await driver.list_vms():
                    await driver.destroy_project_vm(info.vm_id)
            await driver.aclose()

    def __call__(self, **overrides: Any) -> FirecrackerDriver:
        driver = FirecrackerDriver(
            self.config(**overrides),
            DriverContext.for_data_dir(self.data_dir),
            api_observer=self.exchanges.append,
        )
        self.built.append(driver)
        return driver


@pytest.fixture
async def make_driver(
    firecracker_bin: Path, test_images: Path, data_dir: Path, requires_kvm: None
) -> AsyncIterator[DriverFactory]:
    factory = DriverFactory(firecracker_bin / "firecracker", test_images, data_dir, [], [])
    try:
        yield factory
    finally:
        await factory.destroy_all()


@pytest.fixture
async def make_fake_driver(
    fake_firecracker_bin: Path, fake_images: Path, data_dir: Path
) -> AsyncIterator[DriverFactory]:
    """Drivers on fake-firecracker: the driver's whole lifecycle, without KVM."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed (apt-get install e2fsprogs)")
    factory = DriverFactory(fake_firecracker_bin / "firecracker", fake_images, data_dir, [], [])
    try:
        yield factory
    finally:
        await factory.destroy_all()


def vmm_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (a VM's runtime key)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found
