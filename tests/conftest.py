"""Shared fixtures: an asyncio backend, a data directory, and ProjectVM servers to talk to."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client

from server.app import ServerHandle, build_server
from server.config import ServerConfig
from vm_drivers.base import DriverContext
from vm_drivers.registry import DriverSet


@pytest.fixture
def anyio_backend() -> str:
    # aiosqlite and the SDK's stdio client are asyncio-only.
    return "asyncio"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def requires_bwrap() -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed here (the README's test command installs it)")


@pytest.fixture
def local_config(data_dir: Path, requires_bwrap: None) -> ServerConfig:
    return ServerConfig.load(data_dir, driver="local")


@pytest.fixture
async def alice(local_config: ServerConfig) -> AsyncIterator[tuple[Client, ServerHandle]]:
    """An in-memory MCP client acting as agent 'alice' on a local-driver server."""
    handle = build_server(local_config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        yield client, handle


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


TEST_IMAGES = Path(os.environ.get("PROJECTVM_TEST_IMAGES", "/var/tmp/projectvm-test-images"))


@pytest.fixture(scope="session")
def qemu_images() -> Path:
    """Boot artifacts for VM drivers, built once per machine into a shared cache (debootstrap
    and apt: about a minute the first time); skips with the reason when this host cannot."""
    from tests.vm_images import ensure_test_images

    try:
        return ensure_test_images(TEST_IMAGES)
    except Exception as err:  # any reason this host cannot build an image is a skip reason
        pytest.skip(f"cannot build the VM boot artifacts here: {err}")
