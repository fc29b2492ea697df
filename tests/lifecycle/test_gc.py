"""`projectvm gc`: stray VMs of this installation are found and removed; nothing else is."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from mcp import Client

from server.domain.config import ServerConfig
from server.store import Store
from server.surfaces.mcp.server import build_server
from tests.conformance.conftest import spec
from tests.helpers import call
from tests.servers import server_argv
from vm_drivers.base import DriverContext, VMDriver
from vm_drivers.registry import DriverSet

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def gc(data_dir: Path, *flags: str, check: bool = True) -> dict[str, object]:
    result = await anyio.run_process(
        server_argv(data_dir, "gc", "--json", *flags), env={**os.environ}, check=check
    )
    report: dict[str, object] = json.loads(result.stdout)
    return report


def vm_ids(report: dict[str, object], key: str) -> set[str]:
    return {vm["vm_id"] for vm in report[key]}  # type: ignore[attr-defined, index]


@asynccontextmanager
async def made_vms(driver: VMDriver) -> AsyncIterator[list[str]]:
    """VMs the test creates behind the server's back, destroyed whatever happens."""
    made: list[str] = []
    try:
        yield made
    finally:
        with anyio.CancelScope(shield=True):
            for vm_id in made:
                await driver.destroy_project_vm(vm_id)


async def test_gc_removes_what_a_killed_test_left_and_nothing_else(
    driver_config: ServerConfig,
) -> None:
    name = driver_config.driver
    handle = build_server(driver_config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        kept = await call(client, "create_project", name="kept")
    ours = DriverSet(DriverContext.for_data_dir(driver_config.data_dir), driver_config.drivers)
    theirs = DriverSet(
        DriverContext(data_dir=driver_config.data_dir, instance_id="someone-else"),
        driver_config.drivers,
    )
    try:
        async with made_vms(ours.get(name)) as our_vms, made_vms(theirs.get(name)) as their_vms:
            our_vms.append(kept["vm_id"])
            # What a test killed after creating its VM, before recording a project, leaves.
            stray = await ours.get(name).create_project_vm(spec())
            our_vms.append(stray.vm_id)
            foreign = await theirs.get(name).create_project_vm(spec())
            their_vms.append(foreign.vm_id)
            report = await gc(driver_config.data_dir)
            assert stray.vm_id in vm_ids(report, "strays")
            assert kept["vm_id"] not in vm_ids(report, "strays")
            assert report["removed"] == []
            if name == "docker":  # a shared engine: other installations' VMs are seen, not touched
                assert foreign.vm_id in vm_ids(report, "foreign")

            report = await gc(driver_config.data_dir, "--yes")
            assert stray.vm_id in report["removed"]  # type: ignore[operator]
            remaining = {vm.vm_id for vm in await ours.get(name).list_vms()}
            assert stray.vm_id not in remaining
            assert kept["vm_id"] in remaining
            if name == "docker":
                assert foreign.vm_id in {vm.vm_id for vm in await ours.get(name).list_vms()}
            assert vm_ids(await gc(driver_config.data_dir), "strays") == set()

            # A project whose VM is being created has no vm_id yet: its VM is not stray.
            async with await Store.open(driver_config.db_path) as store:
                [record] = await store.projects.list()
                pending = record.model_copy(update={"project_id": "prj_creating", "vm_id": None})
                async with store.transaction():
                    await store.projects.insert(pending)
            in_progress = await ours.get(name).create_project_vm(spec(project_id="prj_creating"))
            our_vms.append(in_progress.vm_id)
            assert in_progress.vm_id not in vm_ids(await gc(driver_config.data_dir), "strays")
    finally:
        await ours.aclose()
        await theirs.aclose()


async def test_gc_finds_what_a_deleted_data_directory_left_and_removes_it_only_when_named(
    tmp_path: Path, docker_config: ServerConfig
) -> None:
    """After PROJECTVM_HOME is deleted, its containers and volumes belong to an installation
    id nobody knows: --all-installations shows them, --instance ID --yes removes them."""
    lost_home, new_home = tmp_path / "lost", tmp_path / "new"
    lost = DriverSet(DriverContext.for_data_dir(lost_home))
    bystander = DriverSet(DriverContext(data_dir=lost_home, instance_id="bystander"))
    lost_id = lost.context.instance_id
    try:
        async with (
            made_vms(lost.get("docker")) as lost_vms,
            made_vms(bystander.get("docker")) as bystander_vms,
        ):
            orphan = await lost.get("docker").create_project_vm(spec())
            lost_vms.append(orphan.vm_id)
            other = await bystander.get("docker").create_project_vm(spec())
            bystander_vms.append(other.vm_id)
            shutil.rmtree(lost_home)  # the data directory is gone; the engine keeps its VMs

            report = await gc(new_home, "--all-installations")
            groups = {g["instance_id"]: g for g in report["installations"]}  # type: ignore[attr-defined]
            assert orphan.vm_id in {vm["vm_id"] for vm in groups[lost_id]["vms"]}
            assert groups[lost_id]["oldest"] is not None
            assert report["removed"] == []
            assert orphan.vm_id not in vm_ids(report, "strays")  # not ours: not a stray

            # Naming the installation without --yes only lists what would go.
            report = await gc(new_home, "--instance", lost_id)
            assert vm_ids(report, "strays") == {orphan.vm_id}
            assert report["removed"] == []

            report = await gc(new_home, "--instance", lost_id, "--yes")
            assert report["removed"] == [orphan.vm_id]
            left = {vm.vm_id for vm in await bystander.get("docker").list_vms()}
            assert orphan.vm_id not in left
            assert other.vm_id in left  # the other installation is untouched
            client = await bystander.get("docker").client()  # type: ignore[attr-defined]
            volumes = await anyio.to_thread.run_sync(
                lambda: {v.name for v in client.volumes.list()}
            )
            assert f"{orphan.vm_id}-workspace" not in volumes
            assert f"{other.vm_id}-workspace" in volumes
            lost_vms.clear()
    finally:
        await lost.aclose()
        await bystander.aclose()
