"""Who commands run as in a Lima VM: an unprivileged user, or (one uid only) a warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_runtime.client import GuestClient
from tests.conformance.conftest import spec
from tests.conformance.running import run
from tests.fakes.lima import FAKE_LIMACTL, commands_share_the_agents_user, fake_limactl_with

from .conftest import MakeDriver

pytestmark = pytest.mark.anyio


async def test_where_the_vm_maps_one_uid_the_launch_log_and_doctor_say_commands_share_the_agent(
    make_driver: MakeDriver, tmp_path: Path
) -> None:
    limactl = fake_limactl_with(tmp_path, FAKE_LIMACTL_SINGLE_UID="1")
    driver = await make_driver(limactl=str(limactl))
    created = await driver.create_project_vm(spec())
    async with GuestClient(await driver.open_channel(created.vm_id)) as client:
        exit_info, out, _, _ = await run(client, "id -u")
    assert (exit_info.exit_code, out) == (0, b"0\n")  # the agent's own uid: nobody else exists
    assert "WARNING" in await driver.log_tail(created.vm_id)
    availability = await driver.probe()
    assert availability.usable
    assert "WARNING: commands are not kept apart from the agent" in availability.reason
    assert availability.details["commands"].startswith("shared: ")
    await driver.destroy_project_vm(created.vm_id)


async def test_with_every_uid_doctor_reports_commands_run_as_the_command_user(
    make_driver: MakeDriver,
) -> None:
    shared = commands_share_the_agents_user(str(FAKE_LIMACTL))
    if shared:
        pytest.skip(shared)
    driver = await make_driver()
    created = await driver.create_project_vm(spec())
    async with GuestClient(await driver.open_channel(created.vm_id)) as client:
        exit_info, out, _, _ = await run(client, "id -un")
    assert (exit_info.exit_code, out) == (0, b"pvm\n")
    availability = await driver.probe()
    assert "WARNING" not in availability.reason
    assert availability.details["commands"].startswith("separate: commands run as pvm")
    await driver.destroy_project_vm(created.vm_id)
