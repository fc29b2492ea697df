"""Resources and network of a per-project Lima VM: set at creation, changed while stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guest_runtime.client import GuestClient
from tests.conformance.conftest import spec
from tests.conformance.running import run
from tests.fakes.lima import calls, fake_limactl
from vm_drivers.lima import LimaDriver

pytestmark = pytest.mark.anyio


async def firewall(driver: LimaDriver, home: Path, vm_id: str) -> str:
    """The VM's ProjectVM firewall chain, read by Lima's user (root in the fake VM)."""
    instance = driver.records.load(vm_id).instance
    return await fake_limactl(home, "shell", instance, "iptables", "-w", "-S", "PROJECTVM-OUT")


async def described(home: Path, name: str) -> dict[str, object]:
    info: dict[str, object] = json.loads(await fake_limactl(home, "list", "--json", name))
    return info


async def test_network_none_is_a_firewall_in_the_vm_that_egress_lifts(
    driver: LimaDriver, lima_home: Path
) -> None:
    wanted = spec(network="none")
    created = await driver.create_project_vm(wanted)
    rules = await firewall(driver, lima_home, created.vm_id)
    assert "-j REJECT" in rules
    assert "-o lo -j RETURN" in rules
    assert "ESTABLISHED" in rules
    # Commands run as a user without sudo: the firewall holds against them.
    async with GuestClient(await driver.open_channel(created.vm_id)) as client:
        lifted, _, err, _ = await run(client, "iptables -w -F PROJECTVM-OUT")
    assert lifted.exit_code != 0, err
    assert await firewall(driver, lima_home, created.vm_id) == rules
    await driver.stop_project_vm(created.vm_id)
    await driver.start_project_vm(created.vm_id, wanted.model_copy(update={"network": "egress"}))
    assert "REJECT" not in await firewall(driver, lima_home, created.vm_id)
    name = driver.records.load(created.vm_id).instance
    params = (await described(lima_home, name))["param"]
    assert isinstance(params, dict)
    assert params["ProjectvmNetwork"] == "egress"
    assert driver.records.load(created.vm_id).spec.network == "egress"
    await driver.destroy_project_vm(created.vm_id)


async def test_resources_changed_while_stopped_are_applied_on_start_and_disks_only_grow(
    driver: LimaDriver, lima_home: Path
) -> None:
    wanted = spec(cpus=1, memory_mb=1024, disk_gb=30)
    created = await driver.create_project_vm(wanted)
    name = driver.records.load(created.vm_id).instance
    info = await described(lima_home, name)
    assert (info["cpus"], info["memory"], info["disk"]) == (1, 1 << 30, 30 << 30)
    await driver.stop_project_vm(created.vm_id)
    bigger = wanted.model_copy(update={"cpus": 3, "memory_mb": 1536, "disk_gb": 40})
    await driver.start_project_vm(created.vm_id, bigger)
    info = await described(lima_home, name)
    assert (info["cpus"], info["memory"], info["disk"]) == (3, 1536 << 20, 40 << 30)
    assert info["status"] == "Running"
    await driver.stop_project_vm(created.vm_id)
    smaller = bigger.model_copy(update={"disk_gb": 10})
    before = len(calls(lima_home))
    await driver.start_project_vm(created.vm_id, smaller)
    assert not [argv for argv in calls(lima_home)[before:] if argv[0] == "edit"]
    assert (await described(lima_home, name))["disk"] == 40 << 30
    await driver.destroy_project_vm(created.vm_id)


async def test_an_unchanged_spec_starts_without_an_edit(
    driver: LimaDriver, lima_home: Path
) -> None:
    wanted = spec()
    created = await driver.create_project_vm(wanted)
    await driver.stop_project_vm(created.vm_id)
    before = len(calls(lima_home))
    await driver.start_project_vm(created.vm_id, wanted)
    verbs = [argv[0] for argv in calls(lima_home)[before:]]
    assert "edit" not in verbs
    assert "start" in verbs
    await driver.destroy_project_vm(created.vm_id)
