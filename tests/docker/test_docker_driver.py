"""What is particular to the docker driver: engine objects, limits, labels, re-creation, crashes."""

from __future__ import annotations

import inspect
from pathlib import Path

import anyio
import docker.errors
import pytest
import requests.exceptions
from mcp import Client

from guest_runtime.client import GuestClient
from server.domain.config import ServerConfig
from server.surfaces.mcp.server import build_server
from tests.conformance.conftest import spec
from tests.helpers import call
from vm_drivers.base import LABEL_PROJECT, LABEL_VM, DriverContext, VMStatus
from vm_drivers.docker import ERROR_TRANSLATIONS, DockerDriver, translate_docker_error
from vm_drivers.errors import (
    DriverConfigError,
    DriverError,
    DriverTimeout,
    DriverUnavailable,
    VMCreationFailed,
    VMNotFound,
    VMResourceExhausted,
)
from vm_drivers.registry import DriverSet

pytestmark = pytest.mark.anyio


def docker_error_classes() -> list[type[BaseException]]:
    return [
        cls
        for _, cls in inspect.getmembers(docker.errors, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == "docker.errors"
    ]


@pytest.mark.parametrize("cls", docker_error_classes(), ids=lambda cls: cls.__name__)
def test_every_docker_error_class_is_translated(cls: type[BaseException]) -> None:
    assert cls in ERROR_TRANSLATIONS, f"docker.errors.{cls.__name__} has no translation"


def test_translations_pick_the_most_specific_class() -> None:
    response = requests.Response()
    response.status_code = 404
    not_found = docker.errors.NotFound("gone", response=response, explanation="no such thing")
    image = docker.errors.ImageNotFound("img", response=response, explanation="no image")
    assert isinstance(translate_docker_error(not_found, "x"), VMNotFound)
    assert isinstance(translate_docker_error(image, "x"), VMCreationFailed)
    full = docker.errors.APIError("x", explanation="write: no space left on device")
    assert isinstance(translate_docker_error(full, "x"), VMResourceExhausted)
    down = translate_docker_error(requests.exceptions.ConnectionError("refused"), "x")
    assert isinstance(down, DriverUnavailable)
    assert "DOCKER_HOST" in str(down)
    slow = translate_docker_error(requests.exceptions.ReadTimeout("slow"), "x")
    assert isinstance(slow, DriverTimeout)
    assert isinstance(translate_docker_error(docker.errors.NullResource(), "x"), DriverConfigError)
    for cls in ERROR_TRANSLATIONS.values():
        assert issubclass(cls, DriverError)


async def test_containers_and_volumes_are_labelled_limited_and_offline(
    docker_driver: DockerDriver,
) -> None:
    wanted = spec(cpus=1.5, memory_mb=300, pids_limit=128)
    created = await docker_driver.create_project_vm(wanted)
    try:
        client = await docker_driver.client()
        container = await anyio.to_thread.run_sync(client.containers.get, created.vm_id)
        labels = container.labels
        assert labels[LABEL_PROJECT] == wanted.project_id
        assert labels[LABEL_VM] == created.vm_id
        host = container.attrs["HostConfig"]
        assert host["NanoCpus"] == 1_500_000_000
        assert host["Memory"] == 300 * 1024 * 1024
        assert host["PidsLimit"] == 128
        assert host["NetworkMode"] == "none"
        volume = await anyio.to_thread.run_sync(client.volumes.get, f"{created.vm_id}-workspace")
        assert volume.attrs["Labels"][LABEL_PROJECT] == wanted.project_id
        async with GuestClient(await docker_driver.open_channel(created.vm_id)) as guest:
            handle = await guest.start_exec(
                "python3 -c \"import socket; socket.create_connection(('10.0.0.1', 80), 2)\""
            )
            async for _ in handle.events():
                pass
            assert handle.exit is not None
            assert handle.exit.exit_code != 0  # no network
    finally:
        await docker_driver.destroy_project_vm(created.vm_id)


async def test_the_workspace_survives_deleting_and_recreating_the_container(
    docker_driver: DockerDriver,
) -> None:
    created = await docker_driver.create_project_vm(spec())
    try:
        async with GuestClient(await docker_driver.open_channel(created.vm_id)) as guest:
            await guest.write_file("keep/me.txt", b"precious\n")
        client = await docker_driver.client()
        container = await anyio.to_thread.run_sync(client.containers.get, created.vm_id)
        await anyio.to_thread.run_sync(lambda: container.remove(force=True))
        assert await docker_driver.get_vm_status(created.vm_id) == VMStatus.STOPPED
        await docker_driver.start_project_vm(created.vm_id)
        assert await docker_driver.get_vm_status(created.vm_id) == VMStatus.RUNNING
        async with GuestClient(await docker_driver.open_channel(created.vm_id)) as guest:
            assert (await guest.read_file("keep/me.txt")).data == b"precious\n"
    finally:
        await docker_driver.destroy_project_vm(created.vm_id)
    with pytest.raises(VMNotFound):
        await docker_driver.get_vm_status(created.vm_id)


async def test_a_missing_image_is_a_clear_creation_error(docker_driver: DockerDriver) -> None:
    with pytest.raises(VMCreationFailed, match="projectvm image build"):
        await docker_driver.create_project_vm(spec(image="projectvm/does-not-exist:0"))
    listed = {v.vm_id for v in await docker_driver.list_vms()}
    assert not any("does-not-exist" in vm for vm in listed)


async def test_killing_the_container_fails_the_running_command_and_the_next_call_works(
    docker_config: ServerConfig, docker_driver: DockerDriver
) -> None:
    handle = build_server(docker_config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        project = await call(client, "create_project", name="crash test")
        project_id = project["project_id"]
        try:
            await call(client, "write_file", project_id=project_id, path="a.txt", content="a")
            outcome: dict[str, object] = {}

            async def long_command() -> None:
                outcome.update(
                    await call(
                        client,
                        "run_command",
                        project_id=project_id,
                        command="touch started.flag; sleep 300",
                    )
                )

            async def kill_when_started() -> None:
                docker_client = await docker_driver.client()
                container = await anyio.to_thread.run_sync(
                    docker_client.containers.get, project["vm_id"]
                )
                while True:
                    listing = await call(client, "list_files", project_id=project_id)
                    if any(e["path"] == "started.flag" for e in listing["entries"]):
                        break
                await anyio.to_thread.run_sync(lambda: container.kill(signal="SIGKILL"))

            with anyio.fail_after(120):
                async with anyio.create_task_group() as group:
                    group.start_soon(long_command)
                    group.start_soon(kill_when_started)
            assert outcome["status"] == "failed"
            assert "went away" in str(outcome["reason"])
            after = await call(client, "run_command", project_id=project_id, command="cat a.txt")
            assert after["stdout"] == "a"
            history = await call(client, "get_execution_history", project_id=project_id)
            statuses = [r["status"] for r in history["executions"]]
            assert statuses == ["completed", "failed"]
        finally:
            await call(client, "delete_project", project_id=project_id)


async def test_project_types_map_to_templates(docker_driver: DockerDriver) -> None:
    client = await docker_driver.client()
    limits = {}
    for project_type in ("development", "sandbox"):
        created = await docker_driver.create_project_vm(
            spec(project_type=project_type, pids_limit=None)
        )
        try:
            container = await anyio.to_thread.run_sync(client.containers.get, created.vm_id)
            host = container.attrs["HostConfig"]
            limits[project_type] = (host["NanoCpus"], host["Memory"] // 2**20, host["PidsLimit"])
        finally:
            await docker_driver.destroy_project_vm(created.vm_id)
    assert limits == {
        "development": (2_000_000_000, 2048, 1024),
        "sandbox": (1_000_000_000, 512, 256),
    }


async def test_egress_projects_get_a_labelled_network_of_their_own_that_goes_with_them(
    docker_driver: DockerDriver,
) -> None:
    created = await docker_driver.create_project_vm(spec(network="egress"))
    client = await docker_driver.client()
    name = f"{created.vm_id}-net"
    try:
        container = await anyio.to_thread.run_sync(client.containers.get, created.vm_id)
        assert set(container.attrs["NetworkSettings"]["Networks"]) == {name}
        network = await anyio.to_thread.run_sync(client.networks.get, name)
        assert network.attrs["Labels"][LABEL_VM] == created.vm_id
        assert await docker_driver.get_vm_status(created.vm_id) == VMStatus.RUNNING
        # Settings back to no network: the container is re-made offline, the network goes.
        offline = spec(project_id=container.labels[LABEL_PROJECT], network="none")
        await docker_driver.start_project_vm(created.vm_id, offline)
        with pytest.raises(docker.errors.NotFound):
            await anyio.to_thread.run_sync(client.networks.get, name)
    finally:
        await docker_driver.destroy_project_vm(created.vm_id)
    with pytest.raises(docker.errors.NotFound):
        await anyio.to_thread.run_sync(client.networks.get, name)


async def test_a_stray_project_network_is_found_for_gc_and_removed(
    docker_driver: DockerDriver,
) -> None:
    created = await docker_driver.create_project_vm(spec(network="egress"))
    client = await docker_driver.client()
    container = await anyio.to_thread.run_sync(client.containers.get, created.vm_id)
    await anyio.to_thread.run_sync(lambda: container.remove(force=True))
    volume = await anyio.to_thread.run_sync(client.volumes.get, f"{created.vm_id}-workspace")
    await anyio.to_thread.run_sync(lambda: volume.remove(force=True))
    try:
        [stray] = [vm for vm in await docker_driver.list_vms() if vm.vm_id == created.vm_id]
        assert "network" in stray.detail
    finally:
        await docker_driver.destroy_project_vm(created.vm_id)
    assert created.vm_id not in {vm.vm_id for vm in await docker_driver.list_vms()}


async def _serve_and_fetch(driver: DockerDriver) -> tuple[int, int]:
    """B serves a file on port 8000; (exit status of B fetching it from its own address,
    exit status of A fetching it from B's address)."""
    a = await driver.create_project_vm(spec(network="egress"))
    b = await driver.create_project_vm(spec(network="egress"))
    try:
        client = await driver.client()
        container = await anyio.to_thread.run_sync(client.containers.get, b.vm_id)
        address = next(
            net["IPAddress"] for net in container.attrs["NetworkSettings"]["Networks"].values()
        )
        fetch = (
            'python3 -c "import urllib.request, sys; urllib.request.urlopen('
            f"'http://{address}:8000/served.txt', timeout=5)\""
        )
        async with GuestClient(await driver.open_channel(b.vm_id)) as guest_b:
            await guest_b.write_file("served.txt", b"B's file\n")
            await guest_b.start_exec("python3 -m http.server 8000 --bind 0.0.0.0")
            own = await _exit_code(
                guest_b, f"for i in $(seq 50); do {fetch} && exit 0; done; exit 1"
            )
            async with GuestClient(await driver.open_channel(a.vm_id)) as guest_a:
                other = await _exit_code(guest_a, fetch)
        return own, other
    finally:
        await driver.destroy_project_vm(a.vm_id)
        await driver.destroy_project_vm(b.vm_id)


async def _exit_code(guest: GuestClient, command: str) -> int:
    handle = await guest.start_exec(command, timeout_s=60)
    async for _ in handle.events():
        pass
    assert handle.exit is not None
    assert handle.exit.exit_code is not None
    return handle.exit.exit_code


async def test_one_project_cannot_fetch_from_anothers_server(docker_driver: DockerDriver) -> None:
    """Finding 13: A fetched a file from B's `python3 -m http.server` at B's address."""
    own, other = await _serve_and_fetch(docker_driver)
    assert own == 0, "B's server never answered B itself"
    assert other != 0, "project A reached project B's server"


async def test_projects_on_a_configured_shared_network_can_reach_each_other(
    data_dir: Path, docker_driver: DockerDriver
) -> None:
    """The opt-in shared network is what it says (and shows the test above can fail)."""
    shared = DriverSet(
        DriverContext.for_data_dir(data_dir), {"docker": {"egress_network": "bridge"}}
    )
    try:
        driver = shared.get("docker")
        assert isinstance(driver, DockerDriver)
        assert await _serve_and_fetch(driver) == (0, 0)
    finally:
        await shared.aclose()


async def test_a_file_survives_stop_container_recreation_and_a_server_restart(
    docker_config: ServerConfig, docker_driver: DockerDriver
) -> None:
    from tests.servers import stdio_params

    params = stdio_params(docker_config.data_dir, driver="docker")
    async with Client(params) as client:
        project = await call(client, "create_project", name="durable")
        project_id = project["project_id"]
        await call(client, "write_file", project_id=project_id, path="keep.txt", content="v1\n")
        await call(client, "stop_project", project_id=project_id)
        await call(client, "start_project", project_id=project_id)
        assert (await call(client, "read_file", project_id=project_id, path="keep.txt"))[
            "content"
        ] == "v1\n"
        engine = await docker_driver.client()
        container = await anyio.to_thread.run_sync(engine.containers.get, project["vm_id"])
        await anyio.to_thread.run_sync(lambda: container.remove(force=True))
        # The next call finds the container gone and re-creates it around the same volume.
        assert (await call(client, "read_file", project_id=project_id, path="keep.txt"))[
            "content"
        ] == "v1\n"
    async with Client(params) as client:
        try:
            ran = await call(client, "run_command", project_id=project_id, command="cat keep.txt")
            assert ran["stdout"] == "v1\n"
            events = (await call(client, "get_events", project_id=project_id))["events"]
            assert "vm.recovered" in [e["kind"] for e in events]
        finally:
            await call(client, "delete_project", project_id=project_id)
