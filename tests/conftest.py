"""Shared fixtures: an asyncio backend, a data directory, and ProjectVM servers to talk to."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import tomli_w
from mcp import Client

from server.domain.config import ServerConfig
from server.surfaces.mcp.server import ServerHandle, build_server
from tests.conformance.backends import BACKENDS, Backend
from tests.fakes import lima
from tests.helpers import call
from vm_drivers.base import DriverContext
from vm_drivers.docker import DockerDriver
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


@pytest.fixture(params=list(BACKENDS))
def server_backend(request: pytest.FixtureRequest) -> Backend:
    """Each way a driver runs here (the conformance suite's backends)."""
    return BACKENDS[request.param]


@pytest.fixture
def server_backend_fixtures(
    server_backend: Backend, request: pytest.FixtureRequest
) -> dict[str, object]:
    return {name: request.getfixturevalue(name) for name in server_backend.needs}


@pytest.fixture
async def driver_config(
    server_backend: Backend, server_backend_fixtures: dict[str, object], data_dir: Path
) -> AsyncIterator[ServerConfig]:
    """A server config on each driver usable here, in its test environment (skipped with the
    probe's reason where it cannot run)."""
    async with server_backend.environment(server_backend_fixtures, data_dir) as options:
        config = ServerConfig.load(data_dir, driver=server_backend.driver)
        config = config.model_copy(
            update={"drivers": {**config.drivers, server_backend.driver: options}}
        )
        drivers = DriverSet(DriverContext.for_data_dir(data_dir), config.drivers)
        try:
            availability = await drivers.probe(server_backend.driver)
        finally:
            await drivers.aclose()
        if not availability.usable:
            pytest.skip(f"driver {server_backend.id} is not usable here: {availability.reason}")
        # Server processes the test starts on this data directory see the same options.
        write_driver_options(config.data_dir, config.drivers)
        yield config


def write_driver_options(data_dir: Path, options: dict[str, dict[str, object]]) -> None:
    """``config.toml`` with per-driver options (what a test's server processes read)."""

    def without_nulls(value: object) -> object:
        if isinstance(value, dict):
            return {k: without_nulls(v) for k, v in value.items() if v is not None}
        return value

    data_dir.mkdir(parents=True, exist_ok=True)
    document = {"drivers": without_nulls(options)}
    (data_dir / "config.toml").write_text(tomli_w.dumps(document))  # type: ignore[arg-type]


def requires_isolation(config: ServerConfig) -> None:
    """Skip a test of isolation on a backend that provides none: the process driver, and
    fake-firecracker (it runs the agent as a plain process of this host: no guest kernel)."""
    if config.driver == "process":
        pytest.skip("the process driver promises no isolation: it runs the agent as the server")
    binary = Path(str(config.drivers.get("firecracker", {}).get("binary", "")))
    # The fake's wrapper script execs tests/firecracker/fake_firecracker.py.
    fake = binary.is_file() and "fake_firecracker.py" in binary.read_text(errors="replace")
    limactl = str(config.drivers.get("lima", {}).get("limactl", ""))
    shared = lima.commands_share_the_agents_user(limactl) if limactl else None
    if config.driver == "lima" and shared:
        pytest.skip(f"{shared}: isolation from the agent is not tested on it")
    if config.driver == "firecracker" and fake:
        pytest.skip(
            "fake-firecracker runs the guest agent as a plain process of this host (there is "
            "no guest kernel here): its commands are not isolated, so isolation is not tested "
            "on it"
        )


@pytest.fixture
async def docker_driver(data_dir: Path) -> AsyncIterator[DockerDriver]:
    """The docker driver on a real Docker-API engine (Podman's compatible service in CI)."""
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


@pytest.fixture
async def alice_projects(
    alice: tuple[Client, ServerHandle],
) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """``await make(name, **settings)`` creates a project as alice; all are deleted after."""
    client, _ = alice
    made: list[str] = []

    async def make(name: str, **settings: object) -> str:
        info = await call(client, "create_project", name=name, settings=settings or None)
        made.append(info["project_id"])
        return str(info["project_id"])

    try:
        yield make
    finally:
        for project_id in made:
            await call(client, "delete_project", project_id=project_id)


# Every test outside tests/unit needs a real backend (a sandbox, an engine, a subprocess);
# the tiers are marked here so `-m "not integration"` runs the fast ones anywhere.
INTEGRATION_TIERS = {
    "conformance",
    "docker",
    "guest",
    "lifecycle",
    "mcp",
    "rest",
    "security",
    "web",
}
SLOW_TESTS = {"test_soak.py", "test_crash_recovery.py", "test_paging.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.relative_to(Path(__file__).parent).parts
        if parts[0] in INTEGRATION_TIERS or parts[0] in ("test_cli.py", "test_soak.py"):
            item.add_marker(pytest.mark.integration)
        if item.path.name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        # tests/web: those that drive Chromium are also `browser` (-m "not browser" skips them).
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


pytest_plugins = ["tests.fixtures.firecracker"]

TEST_IMAGES = Path(os.environ.get("PROJECTVM_TEST_IMAGES", "/var/tmp/projectvm-test-images"))


@pytest.fixture(scope="session")
def rootfs_tree() -> Path:
    """The runtime image's Debian tree (the minimal template), shared by every test run on the
    machine: the local sandbox's root in its image mode; skips with the reason if this host
    cannot build it."""
    from tests.vm_images import ensure_test_tree

    try:
        return ensure_test_tree(TEST_IMAGES)
    except Exception as err:  # any reason this host cannot build a tree is a skip reason
        pytest.skip(f"cannot build the runtime image's tree here: {err}")


@pytest.fixture(scope="session")
def qemu_images() -> Path:
    """Boot artifacts for VM drivers, built once per machine into a shared cache (debootstrap
    and apt: about a minute the first time); skips with the reason when this host cannot."""
    from tests.vm_images import ensure_test_images

    try:
        return ensure_test_images(TEST_IMAGES)
    except Exception as err:  # any reason this host cannot build an image is a skip reason
        pytest.skip(f"cannot build the VM boot artifacts here: {err}")
