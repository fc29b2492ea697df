"""`projectvm gc`: stray VMs of this installation are found and removed; nothing else is."""

from __future__ import annotations

import json
import os
import sys

import anyio
import pytest
from mcp import Client

from server.app import build_server
from server.config import ServerConfig
from tests.conformance.conftest import spec
from tests.helpers import call
from vm_drivers.base import DriverContext
from vm_drivers.registry import DriverSet

pytestmark = pytest.mark.anyio


async def gc(config: ServerConfig, *flags: str) -> dict[str, object]:
    result = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "server.cli",
            "--data-dir",
            str(config.data_dir),
            "gc",
            "--json",
            *flags,
        ],
        env={**os.environ},
    )
    report: dict[str, object] = json.loads(result.stdout)
    return report


def vm_ids(report: dict[str, object], key: str) -> set[str]:
    return {vm["vm_id"] for vm in report[key]}  # type: ignore[attr-defined, index]


async def test_gc_removes_what_a_killed_test_left_and_nothing_else(
    driver_config: ServerConfig,
) -> None:
    name = driver_config.driver
    handle = build_server(driver_config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        kept = await call(client, "create_project", name="kept")
    context = DriverContext.for_data_dir(driver_config.data_dir)
    ours = DriverSet(context)
    theirs = DriverSet(DriverContext(data_dir=driver_config.data_dir, instance_id="someone-else"))
    try:
        # What a test killed after creating its VM, before recording a project, leaves behind.
        stray = await ours.get(name).create_project_vm(spec())
        foreign = await theirs.get(name).create_project_vm(spec())
        report = await gc(driver_config)
        assert stray.vm_id in vm_ids(report, "strays")
        assert kept["vm_id"] not in vm_ids(report, "strays")
        assert report["removed"] == []
        if name == "docker":  # a shared engine: other installations' VMs are seen, not touched
            assert foreign.vm_id in vm_ids(report, "foreign")

        report = await gc(driver_config, "--yes")
        assert stray.vm_id in report["removed"]  # type: ignore[operator]
        remaining = {vm.vm_id for vm in await ours.get(name).list_vms()}
        assert stray.vm_id not in remaining
        assert kept["vm_id"] in remaining
        if name == "docker":
            client = await ours.get("docker").client()  # type: ignore[attr-defined]
            names = await anyio.to_thread.run_sync(lambda: {v.name for v in client.volumes.list()})
            assert f"{stray.vm_id}-workspace" not in names
            assert foreign.vm_id in {vm.vm_id for vm in await ours.get(name).list_vms()}
        assert vm_ids(await gc(driver_config), "strays") == set()

        # A project whose VM is being created has no vm_id recorded yet: its VM is not stray.
        assert handle.state is None  # the server above has shut down; use the store directly
        from server.store import Store

        async with await Store.open(driver_config.db_path) as store:
            [record] = await store.list_projects()
            pending = record.model_copy(update={"project_id": "prj_creating", "vm_id": None})
            await store.insert_project(pending)
        in_progress = await ours.get(name).create_project_vm(spec(project_id="prj_creating"))
        try:
            assert in_progress.vm_id not in vm_ids(await gc(driver_config), "strays")
        finally:
            await ours.get(name).destroy_project_vm(in_progress.vm_id)
    finally:
        await theirs.get(name).destroy_project_vm(foreign.vm_id)
        await ours.get(name).destroy_project_vm(kept["vm_id"])
        await ours.aclose()
        await theirs.aclose()
