"""Real QEMU VMs (TCG here): one shared VM per module where tests allow, since a boot costs
seconds; everything a test creates is destroyed in teardown."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from guest_runtime.client import GuestClient
from vm_drivers.base import DriverContext, VMSpec
from vm_drivers.qemu import QemuDriver
from vm_drivers.registry import DriverSet


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qemu") / "data"


@pytest.fixture(scope="module")
def qemu_options(qemu_images: Path) -> dict[str, Any]:
    return {"images": str(qemu_images)}


def make_driver(data_dir: Path, **options: Any) -> tuple[DriverSet, QemuDriver]:
    drivers = DriverSet(DriverContext.for_data_dir(data_dir), {"qemu": options})
    driver = drivers.get("qemu")
    assert isinstance(driver, QemuDriver)
    return drivers, driver


def vm_spec(**overrides: Any) -> VMSpec:
    values: dict[str, Any] = {
        "project_id": f"prj_q{secrets.token_hex(5)}",
        "name": "qemu-test",
        "labels": {"projectvm.test": "1"},
        "memory_mb": 512,
        "cpus": 1,
    }
    values.update(overrides)
    return VMSpec.model_validate(values)


@pytest.fixture(scope="module")
async def driver(data_dir: Path, qemu_options: dict[str, Any]) -> AsyncIterator[QemuDriver]:
    drivers, qemu = make_driver(data_dir, **qemu_options)
    try:
        yield qemu
    finally:
        await drivers.aclose()


@pytest.fixture(scope="module")
async def shared_vm(driver: QemuDriver) -> AsyncIterator[str]:
    """One VM for the module, with a small (100 MB) workspace disk."""
    created = await driver.create_project_vm(vm_spec(disk_gb=0.1))
    try:
        yield created.vm_id
    finally:
        await driver.destroy_project_vm(created.vm_id)


@pytest.fixture
async def guest(driver: QemuDriver, shared_vm: str) -> AsyncIterator[GuestClient]:
    async with GuestClient(await driver.open_channel(shared_vm)) as client:
        await client.hello()
        yield client
