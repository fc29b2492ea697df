"""The fly driver against the real Fly Machines API: costs money, runs only with FLY_API_TOKEN.

Settings from the environment: FLY_API_TOKEN (an org token), FLY_ORG (default personal),
FLY_REGION (default iad), PROJECTVM_FLY_IMAGE (any image with python3; default
python:3.12-slim). Everything the test makes is labelled and destroyed in teardown.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from guest_runtime.client import GuestClient
from tests.conformance.running import run
from vm_drivers.base import DriverContext, VMSpec, VMStatus
from vm_drivers.config import FlyDriverConfig
from vm_drivers.fly.driver import FlyDriver

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.cloud,
    pytest.mark.integration,
    pytest.mark.skipif(
        not os.environ.get("FLY_API_TOKEN"), reason="FLY_API_TOKEN is not set (a paid cloud test)"
    ),
]


@pytest.fixture
async def cloud_driver(data_dir: Path) -> AsyncIterator[FlyDriver]:
    config = FlyDriverConfig(
        org_slug=os.environ.get("FLY_ORG", "personal"),
        region=os.environ.get("FLY_REGION", "iad"),
        image=os.environ.get("PROJECTVM_FLY_IMAGE", "python:3.12-slim"),
        memory_mb=512,
        disk_gb=1,
    )
    driver = FlyDriver(config, DriverContext.for_data_dir(data_dir))
    try:
        yield driver
    finally:
        await driver.aclose()


async def test_a_project_vm_lives_sleeps_and_wakes_on_fly(cloud_driver: FlyDriver) -> None:
    spec = VMSpec(project_id=f"prj_c{secrets.token_hex(6)}", name="cloud", labels={"t": "1"})
    vm = f"pvm-{spec.project_id}"
    try:
        with anyio.fail_after(600):
            created = await cloud_driver.create_project_vm(spec)
            assert created.status == VMStatus.RUNNING
            async with GuestClient(await cloud_driver.open_channel(vm)) as client:
                assert (await client.hello()).root == "/workspace"
                await client.write_file("kept.txt", b"on the volume")
                exit_info, out, _, _ = await run(client, "cat kept.txt")
                assert (exit_info.exit_code, out) == (0, b"on the volume")
            await cloud_driver.suspend_project_vm(vm)
            assert await cloud_driver.get_vm_status(vm) == VMStatus.STOPPED
            await cloud_driver.resume_project_vm(vm)
            async with GuestClient(await cloud_driver.open_channel(vm)) as client:
                assert (await client.read_file("kept.txt")).data == b"on the volume"
            assert vm in {info.vm_id for info in await cloud_driver.list_vms()}
    finally:
        with anyio.CancelScope(shield=True):
            await cloud_driver.destroy_project_vm(vm)
    assert vm not in {info.vm_id for info in await cloud_driver.list_vms()}
