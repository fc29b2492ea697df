"""Servers on either real driver, for lifecycle tests that must hold on local and docker."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ServerConfig
from vm_drivers.base import DriverContext
from vm_drivers.registry import DriverSet


@pytest.fixture(params=["local", "docker"])
async def driver_config(request: pytest.FixtureRequest, data_dir: Path) -> ServerConfig:
    """A server config on each driver usable here (skipped with the probe's reason if not)."""
    drivers = DriverSet(DriverContext.for_data_dir(data_dir))
    try:
        availability = await drivers.probe(request.param)
    finally:
        await drivers.aclose()
    if not availability.usable:
        pytest.skip(f"driver {request.param} is not usable here: {availability.reason}")
    return ServerConfig.load(data_dir, driver=request.param)
