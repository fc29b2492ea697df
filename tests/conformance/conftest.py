"""The driver conformance suite: every test runs once per registered driver.

A driver whose backend is not usable here is skipped with the reason its probe gives. Every VM
a test creates is labelled and destroyed in teardown, also when the test fails.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from guest_runtime.client import GuestClient
from vm_drivers.base import DriverContext, VMDriver, VMSpec
from vm_drivers.registry import DriverSet, available_driver_names

from .backends import backend_options

TEST_LABEL = "projectvm.test"


@pytest.fixture(params=available_driver_names())
def driver_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def driver_options(
    driver_name: str, tmp_path: Path
) -> AsyncIterator[dict[str, dict[str, Any]]]:
    """Options per driver name: a stand-in backend's address where the driver needs one."""
    async with backend_options(driver_name, tmp_path / "backend") as options:
        yield {driver_name: options}


@pytest.fixture
async def drivers(
    driver_name: str, driver_options: dict[str, dict[str, Any]], data_dir: Path
) -> AsyncIterator[DriverSet]:
    driver_set = DriverSet(DriverContext.for_data_dir(data_dir), driver_options)
    availability = await driver_set.probe(driver_name)
    if not availability.usable:
        await driver_set.aclose()
        pytest.skip(f"driver {driver_name} is not usable here: {availability.reason}")
    try:
        yield driver_set
    finally:
        await driver_set.aclose()


@pytest.fixture
def driver(drivers: DriverSet, driver_name: str) -> VMDriver:
    return drivers.get(driver_name)


def spec(**overrides: object) -> VMSpec:
    values: dict[str, object] = {
        "project_id": f"prj_t{secrets.token_hex(6)}",
        "name": "conformance",
        "labels": {TEST_LABEL: "1"},
        "pids_limit": 256,
    }
    values.update(overrides)
    return VMSpec.model_validate(values)


@pytest.fixture
async def vm(driver: VMDriver) -> AsyncIterator[str]:
    created = await driver.create_project_vm(spec())
    try:
        yield created.vm_id
    finally:
        await driver.destroy_project_vm(created.vm_id)


@pytest.fixture
async def guest(driver: VMDriver, vm: str) -> AsyncIterator[GuestClient]:
    stream = await driver.open_channel(vm)
    async with GuestClient(stream) as client:
        await client.hello()
        yield client
