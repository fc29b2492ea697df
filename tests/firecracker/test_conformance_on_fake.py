"""The whole driver conformance suite on the firecracker driver over fake-firecracker.

The driver runs at its defaults — ``firecracker`` found on PATH, boot images in
``DATA_DIR/vm-images`` — but the ``firecracker`` on PATH is :mod:`.fake_firecracker`, which
serves Firecracker's API and vsock handshake with the real guest agent as a host subprocess.
This checks everything the driver does between the API and the channel; that the real binary
accepts the same requests is ``test_real_firecracker.py``'s job, and the suite on a real VM is
``test_conformance_on_kvm.py``'s.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conformance.conftest import guest, vm
from tests.conformance.test_commands import *  # noqa: F403 - the suite itself
from tests.conformance.test_files import *  # noqa: F403
from tests.conformance.test_lifecycle import *  # noqa: F403
from vm_drivers.base import DriverContext, VMDriver
from vm_drivers.registry import DriverSet

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

__all__ = ["guest", "vm"]  # the suite's fixtures, imported so its tests find them here


@pytest.fixture(params=["firecracker"])
async def drivers(
    fake_firecracker_bin: Path,
    fake_images: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[DriverSet]:
    """Replaces the suite's fixture: only firecracker, at its defaults, over the fake."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm: the driver's probe refuses before any boot")
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed (apt-get install e2fsprogs)")
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "vm-images").symlink_to(fake_images)
    monkeypatch.setenv("PATH", f"{fake_firecracker_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    driver_set = DriverSet(DriverContext.for_data_dir(data_dir))
    availability = await driver_set.probe("firecracker")
    if not availability.usable:
        await driver_set.aclose()
        pytest.fail(f"the firecracker driver over the fake should be usable: {availability.reason}")
    try:
        yield driver_set
    finally:
        await driver_set.aclose()


@pytest.fixture
def driver(drivers: DriverSet) -> VMDriver:
    return drivers.get("firecracker")
