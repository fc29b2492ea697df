"""The whole driver conformance suite on firecracker, where KVM can boot a guest.

Every test of ``tests/conformance`` runs here with the firecracker driver at its defaults (the
real binary on PATH, boot images in ``DATA_DIR/vm-images``). The images are the ones named by
``PROJECTVM_VM_IMAGES`` (the image build's output directory: ``vmlinux``,
``initramfs.cpio.gz``, ``rootfs.ext4``); without it the test images stand in, which have no
agent, so the probe fails. Whether the suite runs is the driver's own probe's verdict, taken
once per session: on a host whose ``/dev/kvm`` cannot run a guest (nested or partial KVM, as
here) every test is skipped with the probe's reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from tests.conformance.conftest import guest, vm
from tests.conformance.test_commands import *  # noqa: F403 - the suite itself
from tests.conformance.test_files import *  # noqa: F403
from tests.conformance.test_lifecycle import *  # noqa: F403
from vm_drivers.base import Availability, DriverContext, VMDriver
from vm_drivers.config import FirecrackerDriverConfig
from vm_drivers.firecracker.driver import FirecrackerDriver
from vm_drivers.registry import DriverSet

from .conftest import TEST_BOOT_TIMEOUT_S

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.slow]

__all__ = ["guest", "vm"]  # the suite's fixtures, imported so its tests find them here


@dataclass(frozen=True)
class KvmVerdict:
    availability: Availability
    cache: Path
    binary: Path
    images: Path


@pytest.fixture(scope="session")
def kvm_verdict(
    tmp_path_factory: pytest.TempPathFactory, firecracker_bin: Path, test_images: Path
) -> KvmVerdict:
    """The firecracker probe's verdict with the best images this host has, taken once."""
    explicit = os.environ.get("PROJECTVM_VM_IMAGES")
    images = Path(explicit) if explicit else test_images
    data_dir = tmp_path_factory.mktemp("kvm-probe")
    config = FirecrackerDriverConfig(
        binary=str(firecracker_bin / "firecracker"),
        images_dir=images,
        # The stand-in images can never say hello: do not wait long for them.
        probe_timeout_s=30 if explicit else TEST_BOOT_TIMEOUT_S,
    )

    async def probe() -> Availability:
        driver = FirecrackerDriver(config, DriverContext.for_data_dir(data_dir))
        try:
            with anyio.fail_after(config.probe_timeout_s + 30):
                return await driver.probe()
        finally:
            await driver.aclose()

    availability = anyio.run(probe)
    return KvmVerdict(
        availability, data_dir / "firecracker" / "boot-probe.json", firecracker_bin, images
    )


@pytest.fixture(params=["firecracker"])
async def drivers(
    kvm_verdict: KvmVerdict, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[DriverSet]:
    """Replaces the suite's fixture: only firecracker, at its defaults, found like a user's."""
    if not kvm_verdict.availability.usable:
        pytest.skip(f"driver firecracker is not usable here: {kvm_verdict.availability.reason}")
    (data_dir / "firecracker").mkdir(parents=True)
    shutil.copy(kvm_verdict.cache, data_dir / "firecracker" / "boot-probe.json")
    (data_dir / "vm-images").symlink_to(kvm_verdict.images)
    monkeypatch.setenv("PATH", f"{kvm_verdict.binary}{os.pathsep}{os.environ.get('PATH', '')}")
    driver_set = DriverSet(DriverContext.for_data_dir(data_dir))
    try:
        yield driver_set
    finally:
        await driver_set.aclose()


@pytest.fixture
def driver(drivers: DriverSet) -> VMDriver:
    return drivers.get("firecracker")
