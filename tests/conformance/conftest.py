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
from vm_drivers.registry import DriverSet

from .backends import Backend, backends

TEST_LABEL = "projectvm.test"
BACKENDS = {backend.id: backend for backend in backends()}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    chosen = BACKENDS[request.param]
    reason = chosen.unavailable()
    if reason:
        pytest.skip(f"{chosen.id} cannot run here: {reason}")
    return chosen


@pytest.fixture
async def driver_options(backend: Backend) -> AsyncIterator[dict[str, dict[str, Any]]]:
    """The driver options of the backend's test environment (set up and torn down here)."""
    async with backend.environment() as options:
        yield {backend.driver: options}


@pytest.fixture
async def drivers(
    backend: Backend, driver_options: dict[str, dict[str, Any]], data_dir: Path
) -> AsyncIterator[DriverSet]:
    driver_set = DriverSet(DriverContext.for_data_dir(data_dir), options=driver_options)
    availability = await driver_set.probe(backend.driver)
    if not availability.usable:
        await driver_set.aclose()
        pytest.skip(f"driver {backend.id} is not usable here: {availability.reason}")
    try:
        yield driver_set
    finally:
        await driver_set.aclose()


@pytest.fixture
def driver(drivers: DriverSet, backend: Backend) -> VMDriver:
    return drivers.get(backend.driver)


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
