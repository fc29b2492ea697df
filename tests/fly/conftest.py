"""The fly driver against ``FakeFlyMachinesAPI``: in-process API, real agents, a fake proxy."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_fly import FakeFlyMachinesAPI, processes_under
from vm_drivers.base import DriverContext
from vm_drivers.config import FlyDriverConfig
from vm_drivers.fly.driver import FlyDriver


@pytest.fixture
def requires_sandbox() -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("the fake's Machines run in bubblewrap, which is not installed here")


@pytest.fixture
async def fake_fly(tmp_path: Path, requires_sandbox: None) -> AsyncIterator[FakeFlyMachinesAPI]:
    root = tmp_path / "fake-fly"
    async with FakeFlyMachinesAPI(root) as fake:
        yield fake
        fake.assert_clean()
    assert processes_under(root) == [], "the fake left Machine processes running"


def make_driver(fake: FakeFlyMachinesAPI, data_dir: Path, **overrides: Any) -> FlyDriver:
    options = {**fake.driver_options("http://fake-fly.invalid"), **overrides}
    config = FlyDriverConfig.model_validate(options)
    return FlyDriver(config, DriverContext.for_data_dir(data_dir), transport=fake.transport())


@pytest.fixture
async def fly_driver(fake_fly: FakeFlyMachinesAPI, data_dir: Path) -> AsyncIterator[FlyDriver]:
    driver = make_driver(fake_fly, data_dir)
    try:
        yield driver
    finally:
        await driver.aclose()
