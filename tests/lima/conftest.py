"""Fixtures for the lima driver's own tests: a fake Lima (tests/fakes) and drivers on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.lima import (
    SHARED_INSTANCE,
    driver_options,
    fake_lima_home,
    fake_limactl,
    missing_tools,
)
from vm_drivers.base import DriverContext
from vm_drivers.config import LimaDriverConfig
from vm_drivers.lima import LimaDriver

MakeDriver = Callable[..., Awaitable[LimaDriver]]


@pytest.fixture
async def lima_home() -> AsyncIterator[Path]:
    """A private LIMA_HOME for fake-limactl; every instance in it is deleted afterwards."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    async with fake_lima_home() as home:
        yield home


@pytest.fixture
async def shared_home(lima_home: Path) -> Path:
    """``lima_home`` with the shared instance made and running."""
    await fake_limactl(lima_home, "create", f"--name={SHARED_INSTANCE}", "template:debian-12")
    await fake_limactl(lima_home, "start", SHARED_INSTANCE)
    return lima_home


@pytest.fixture
async def make_driver(lima_home: Path, data_dir: Path) -> AsyncIterator[MakeDriver]:
    """Build lima drivers on the fake (each closed afterwards); options override the defaults."""
    built: list[LimaDriver] = []

    async def make(**overrides: Any) -> LimaDriver:
        config = LimaDriverConfig.model_validate(driver_options(lima_home, **overrides))
        driver = LimaDriver(config, DriverContext.for_data_dir(data_dir))
        built.append(driver)
        return driver

    try:
        yield make
    finally:
        for driver in built:
            await driver.aclose()


@pytest.fixture
async def driver(make_driver: MakeDriver) -> LimaDriver:
    """A per-project lima driver on the fake."""
    return await make_driver()
