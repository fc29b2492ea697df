"""A real Docker-API engine (Docker, or Podman's compatible service in CI) for these tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.config import ServerConfig
from vm_drivers.base import DriverContext
from vm_drivers.docker import DockerDriver
from vm_drivers.registry import DriverSet


@pytest.fixture
async def docker_driver(data_dir: Path) -> AsyncIterator[DockerDriver]:
    drivers = DriverSet(DriverContext.for_data_dir(data_dir))
    try:
        availability = await drivers.probe("docker")
        if not availability.usable:
            pytest.skip(f"docker driver not usable here: {availability.reason}")
        driver = drivers.get("docker")
        assert isinstance(driver, DockerDriver)
        yield driver
    finally:
        await drivers.aclose()


@pytest.fixture
def docker_config(data_dir: Path, docker_driver: DockerDriver) -> ServerConfig:
    return ServerConfig.load(data_dir, driver="docker")
