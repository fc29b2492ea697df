"""The fly driver against ``FakeFlyMachinesAPI``: in-process API, real agents, a fake proxy."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_fly import FakeFlyMachinesAPI
from vm_drivers.base import DriverContext
from vm_drivers.config import FlyDriverConfig
from vm_drivers.fly.driver import FlyDriver

# Fast enough for tests; every wait still has a bound.
FAST: dict[str, Any] = {
    "retry_initial_s": 0.01,
    "retry_max_s": 0.05,
    "rate_limit_wait_s": 0.05,
    "lease_wait_s": 2,
    "wait_timeout_s": 5,
    "start_timeout_s": 30,
    "channel_timeout_s": 20,
    "stop_timeout_s": 5,
}


@pytest.fixture
def requires_sandbox() -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("the fake's Machines run in bubblewrap, which is not installed here")


@pytest.fixture
async def fake_fly(tmp_path: Path, requires_sandbox: None) -> AsyncIterator[FakeFlyMachinesAPI]:
    async with FakeFlyMachinesAPI(tmp_path / "fake-fly") as fake:
        yield fake
        fake.assert_clean()


def make_driver(fake: FakeFlyMachinesAPI, data_dir: Path, **overrides: Any) -> FlyDriver:
    options = {**fake.driver_options("http://fake-fly.invalid"), **FAST, **overrides}
    config = FlyDriverConfig.model_validate(options)
    return FlyDriver(config, DriverContext.for_data_dir(data_dir), transport=fake.transport())


@pytest.fixture
async def fly_driver(fake_fly: FakeFlyMachinesAPI, data_dir: Path) -> AsyncIterator[FlyDriver]:
    driver = make_driver(fake_fly, data_dir)
    try:
        yield driver
    finally:
        await driver.aclose()
