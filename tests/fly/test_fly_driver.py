"""The fly driver's behaviour on Fly's hard parts, through FakeFlyMachinesAPI and real agents."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import anyio
import httpx
import pytest

from guest_runtime.client import GuestClient
from guest_runtime.errors import GuestUnreachable
from tests.conformance.running import LIST_PROCESSES, run
from tests.fakes.fake_fly import FakeFlyMachinesAPI
from vm_drivers.base import LABEL_PROJECT, VMSpec, VMStatus
from vm_drivers.errors import VMCreationFailed, VMOperationFailed
from vm_drivers.fly.driver import FlyDriver

from .conftest import make_driver

pytestmark = pytest.mark.anyio

TICKER = (
    "setsid sh -c 'echo $$ > ticker.pid; while :; do date +%s%N >> tick; sleep 0.05; done' "
    ">/dev/null 2>&1 &"
)


# A killed server's lease on the Machine it created outlives it until its TTL runs out.
SHORT_LEASES = {"lease_ttl_s": 1, "lease_wait_s": 10}


def new_spec(**overrides: object) -> VMSpec:
    values: dict[str, object] = {"project_id": f"prj_f{secrets.token_hex(5)}", "name": "fly"}
    values.update(overrides)
    return VMSpec.model_validate(values)


async def lines_of(client: GuestClient, path: str) -> int:
    if not (await client.stat(path)).exists:
        return 0
    return (await client.read_file(path)).data.count(b"\n")


async def wait_for_more_lines(client: GuestClient, path: str, than: int) -> int:
    with anyio.fail_after(20):
        while (count := await lines_of(client, path)) <= than:
            await anyio.lowlevel.checkpoint()
    return count


async def test_suspend_and_resume_keep_a_background_process_and_its_memory(
    fly_driver: FlyDriver, fake_fly: FakeFlyMachinesAPI
) -> None:
    created = await fly_driver.create_project_vm(new_spec())
    vm = created.vm_id
    async with GuestClient(await fly_driver.open_channel(vm)) as client:
        await client.hello()
        await run(client, TICKER)
        before = await wait_for_more_lines(client, "tick", 2)
        pid = (await client.read_file("ticker.pid")).data.strip().decode()
        assert pid.isdigit()
    await fly_driver.suspend_project_vm(vm)
    [machine] = fake_fly.live_machines()
    assert machine.state == "suspended"
    assert await fly_driver.get_vm_status(vm) == VMStatus.STOPPED
    with pytest.raises(GuestUnreachable):
        await fly_driver.open_channel(vm)
    await fly_driver.resume_project_vm(vm)
    assert await fly_driver.get_vm_status(vm) == VMStatus.RUNNING
    async with GuestClient(await fly_driver.open_channel(vm)) as client:
        await client.hello()
        alive, _, _, _ = await run(client, f"test -d /proc/{pid}")
        assert alive.exit_code == 0  # the same process, never restarted
        await wait_for_more_lines(client, "tick", before)
        await client.write_file("after-resume.txt", b"landed")
        assert (await client.read_file("after-resume.txt")).data == b"landed"
    assert machine.boots == 1  # resumed, not booted again


async def test_a_refused_suspend_falls_back_to_a_stop(
    fly_driver: FlyDriver, fake_fly: FakeFlyMachinesAPI
) -> None:
    vm = (await fly_driver.create_project_vm(new_spec())).vm_id
    async with GuestClient(await fly_driver.open_channel(vm)) as client:
        await client.write_file("kept.txt", b"on the volume")
    fake_fly.refuse_suspend = True
    await fly_driver.suspend_project_vm(vm)
    [machine] = fake_fly.live_machines()
    assert machine.state == "stopped"
    await fly_driver.resume_project_vm(vm)
    async with GuestClient(await fly_driver.open_channel(vm)) as client:
        assert (await client.read_file("kept.txt")).data == b"on the volume"
    assert machine.boots == 2  # a cold boot this time


async def test_a_lease_someone_else_holds_is_waited_for(
    fly_driver: FlyDriver, fake_fly: FakeFlyMachinesAPI
) -> None:
    vm = (await fly_driver.create_project_vm(new_spec())).vm_id
    [machine] = fake_fly.live_machines()
    fake_fly.hold_lease(machine.id, release_after_attempts=3)
    await fly_driver.stop_project_vm(vm)
    assert machine.state == "stopped"
    lease_tries = [
        r
        for r in fake_fly.requests
        if r == ("POST", f"/v1/apps/{machine.app}/machines/{machine.id}/lease")
    ]
    assert len(lease_tries) >= 4


async def test_a_lease_held_too_long_fails_clearly_and_changes_nothing(
    fly_driver: FlyDriver, fake_fly: FakeFlyMachinesAPI
) -> None:
    vm = (await fly_driver.create_project_vm(new_spec())).vm_id
    [machine] = fake_fly.live_machines()
    fake_fly.hold_lease(machine.id, owner="alice@example.com")
    with anyio.fail_after(30), pytest.raises(VMOperationFailed) as failure:
        await fly_driver.stop_project_vm(vm)
    message = str(failure.value)
    assert "leased by someone else" in message
    assert "alice@example.com" in message
    assert "try again" in message
    assert machine.state == "started"


async def test_rate_limits_on_repeatable_calls_are_retried(
    fly_driver: FlyDriver, fake_fly: FakeFlyMachinesAPI
) -> None:
    vm = (await fly_driver.create_project_vm(new_spec())).vm_id
    injection = fake_fly.fail_next("GET", "/apps/*/machines/*", 429, times=2, retry_after=0.01)
    assert await fly_driver.get_vm_status(vm) == VMStatus.RUNNING
    assert injection.hits == 2


async def test_a_rate_limited_create_looks_before_it_tries_again(
    fly_driver: FlyDriver, fake_fly: FakeFlyMachinesAPI
) -> None:
    fake_fly.fail_next("POST", "/apps/*/machines", 429)
    fake_fly.fail_next("POST", "/apps/*/volumes", 503)
    vm = (await fly_driver.create_project_vm(new_spec())).vm_id
    assert [m.state for m in fake_fly.live_machines()] == ["started"]
    assert len(fake_fly.volumes) == 1
    assert await fly_driver.get_vm_status(vm) == VMStatus.RUNNING


async def test_a_create_that_succeeded_behind_an_error_is_not_repeated(
    fly_driver: FlyDriver, fake_fly: FakeFlyMachinesAPI
) -> None:
    # The Machine is made, then the answer is lost (Fly's "silent success").
    fake_fly.fail_next("POST", "/apps/*/machines", 408, after_commit=True)
    fake_fly.fail_next("POST", "/apps", 502, after_commit=True)
    fake_fly.fail_next("POST", "/apps/*/volumes", 500, after_commit=True)
    await fly_driver.create_project_vm(new_spec())
    assert len(fake_fly.live_machines()) == 1
    assert len(fake_fly.volumes) == 1


async def test_a_machine_that_fails_to_start_fails_the_creation_and_leaks_nothing(
    fly_driver: FlyDriver, fake_fly: FakeFlyMachinesAPI, data_dir: Path
) -> None:
    fake_fly.failing_images.add("registry.fly.io/broken:1")
    spec = new_spec(image="registry.fly.io/broken:1")
    with anyio.fail_after(60), pytest.raises(VMCreationFailed) as failure:
        await fly_driver.create_project_vm(spec)
    message = str(failure.value)
    assert "failed" in message
    assert "failed to pull the image" in message
    assert fake_fly.apps == {}
    assert fake_fly.live_machines() == []
    assert fake_fly.volumes == {}
    assert await fly_driver.list_vms() == []
    assert list((data_dir / "fly" / "vms").iterdir()) == []
    assert list((data_dir / "fly" / "tokens").iterdir()) == []


async def test_an_agent_that_never_answers_fails_the_creation_within_the_bound(
    fake_fly: FakeFlyMachinesAPI, data_dir: Path
) -> None:
    # The image boots but its main process dies at once (no python3 in it, say).
    fake_fly.crashing_images.add("registry.fly.io/no-python:1")
    driver = make_driver(fake_fly, data_dir, channel_timeout_s=3)
    try:
        with anyio.fail_after(60), pytest.raises(VMCreationFailed) as failure:
            await driver.create_project_vm(new_spec(image="registry.fly.io/no-python:1"))
        message = str(failure.value)
        assert "cannot reach the agent" in message
        assert "exit code 127" in message
        assert fake_fly.apps == {}
    finally:
        await driver.aclose()


async def test_a_machine_goes_to_the_region_its_volume_landed_in(
    fly_driver: FlyDriver, fake_fly: FakeFlyMachinesAPI
) -> None:
    fake_fly.volume_region = "ord"
    created = await fly_driver.create_project_vm(new_spec())
    [machine] = fake_fly.live_machines()
    [volume] = fake_fly.volumes.values()
    assert volume.region == machine.region == "ord"
    assert created.details["region"] == "ord"


async def test_a_server_killed_after_creating_the_machine_leaves_nothing_unaccounted(
    fake_fly: FakeFlyMachinesAPI, data_dir: Path
) -> None:
    spec = new_spec()
    gate = fake_fly.gate("POST", "/apps/*/machines")
    first = make_driver(fake_fly, data_dir, **SHORT_LEASES)
    async with anyio.create_task_group() as group:
        group.start_soon(first.create_project_vm, spec)
        with anyio.fail_after(30):
            await gate.reached.wait()
        group.cancel_scope.cancel()  # the server dies before it learns the Machine's id
    gate.release.set()
    await first.aclose()
    [machine] = fake_fly.live_machines()

    restarted = make_driver(fake_fly, data_dir, **SHORT_LEASES)
    try:
        # gc sees it (by metadata), labelled as this installation's ...
        [info] = await restarted.list_vms()
        assert info.vm_id == f"pvm-{spec.project_id}"
        assert info.labels[LABEL_PROJECT] == spec.project_id
        # ... and the next start adopts it instead of making another.
        await restarted.start_project_vm(info.vm_id)
        assert fake_fly.live_machines() == [machine]
        async with GuestClient(await restarted.open_channel(info.vm_id)) as client:
            assert (await client.hello()).root == "/workspace"
        await restarted.destroy_project_vm(info.vm_id)
        assert fake_fly.apps == {}
    finally:
        await restarted.aclose()


async def test_a_retried_creation_after_a_kill_adopts_what_exists(
    fake_fly: FakeFlyMachinesAPI, data_dir: Path
) -> None:
    spec = new_spec()
    gate = fake_fly.gate("POST", "/apps/*/machines")
    first = make_driver(fake_fly, data_dir, **SHORT_LEASES)
    async with anyio.create_task_group() as group:
        group.start_soon(first.create_project_vm, spec)
        with anyio.fail_after(30):
            await gate.reached.wait()
        group.cancel_scope.cancel()
    gate.release.set()
    await first.aclose()
    again = make_driver(fake_fly, data_dir, **SHORT_LEASES)
    try:
        await again.create_project_vm(spec)
        assert len(fake_fly.live_machines()) == 1
        assert len(fake_fly.apps) == 1
        assert len(fake_fly.volumes) == 1
    finally:
        await again.aclose()


async def test_an_app_left_without_a_machine_is_listed_for_gc(
    fake_fly: FakeFlyMachinesAPI, data_dir: Path
) -> None:
    spec = new_spec()
    gate = fake_fly.gate("POST", "/apps/*/volumes")
    first = make_driver(fake_fly, data_dir)
    async with anyio.create_task_group() as group:
        group.start_soon(first.create_project_vm, spec)
        with anyio.fail_after(30):
            await gate.reached.wait()
        group.cancel_scope.cancel()
    gate.release.set()
    await first.aclose()
    # Another installation's server (no record of it) still finds and labels it.
    other = make_driver(fake_fly, data_dir.parent / "elsewhere")
    try:
        [info] = await other.list_vms()
        assert info.status == VMStatus.FAILED
        assert info.project_id == spec.project_id
        assert "without a Machine" in info.detail
    finally:
        await other.aclose()
    restarted = make_driver(fake_fly, data_dir)
    try:
        await restarted.destroy_project_vm(info.vm_id)
        assert fake_fly.apps == {}
        assert fake_fly.volumes == {}
    finally:
        await restarted.aclose()


async def test_a_new_channel_closes_the_old_one_and_kills_its_commands(
    fly_driver: FlyDriver,
) -> None:
    vm = (await fly_driver.create_project_vm(new_spec())).vm_id
    async with GuestClient(await fly_driver.open_channel(vm)) as first:
        handle = await first.start_exec("exec sleep 300")
        async with GuestClient(await fly_driver.open_channel(vm)) as second:
            with pytest.raises(GuestUnreachable), anyio.fail_after(30):
                async for _ in handle.events():
                    pass
            assert first.closed
            with anyio.fail_after(30):
                while b"sleep 300" in (await run(second, LIST_PROCESSES))[1]:
                    await anyio.lowlevel.checkpoint()


async def test_the_agent_token_is_private_and_a_lost_one_is_replaced(
    fly_driver: FlyDriver, fake_fly: FakeFlyMachinesAPI, data_dir: Path
) -> None:
    vm = (await fly_driver.create_project_vm(new_spec())).vm_id
    tokens = data_dir / "fly" / "tokens"
    token_file = tokens / vm
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o700
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text()
    [app] = fake_fly.apps.values()
    assert app.secrets == {"PROJECTVM_AGENT_TOKEN": token}
    [machine] = fake_fly.live_machines()
    assert token not in repr(machine.config)  # a secret, never in the Machine's config
    token_file.unlink()  # a server moved to a new data directory
    with pytest.raises(GuestUnreachable, match="no agent token"):
        await fly_driver.open_channel(vm)
    await fly_driver.start_project_vm(vm)
    assert app.secrets["PROJECTVM_AGENT_TOKEN"] == token_file.read_text() != token
    async with GuestClient(await fly_driver.open_channel(vm)) as client:
        assert (await client.hello()).protocol_version == 1


async def test_every_request_of_a_whole_lifecycle_was_validated_against_the_spec(
    fly_driver: FlyDriver, fake_fly: FakeFlyMachinesAPI
) -> None:
    vm = (await fly_driver.create_project_vm(new_spec(cpus=2, memory_mb=3000, disk_gb=3))).vm_id
    async with GuestClient(await fly_driver.open_channel(vm)) as client:
        await client.hello()
    await fly_driver.suspend_project_vm(vm)
    await fly_driver.resume_project_vm(vm)
    await fly_driver.stop_project_vm(vm)
    await fly_driver.start_project_vm(vm)
    await fly_driver.list_vms()
    await fly_driver.destroy_project_vm(vm)
    assert fly_driver.api().requests_sent == len(fake_fly.requests) == fake_fly.validated > 20
    assert fake_fly.violations == []
    operations = {path.split("/")[-1] for _, path in fake_fly.requests}
    assert {"lease", "wait", "start", "stop", "secrets", "ip_assignments", "volumes"} <= operations


async def test_the_fake_refuses_a_request_the_spec_does_not_allow(
    fake_fly: FakeFlyMachinesAPI,
) -> None:
    headers = {"Authorization": f"Bearer {fake_fly.token}"}
    async with httpx.AsyncClient(
        transport=fake_fly.transport(), base_url="http://fake", headers=headers
    ) as client:
        misspelt = await client.post("/v1/apps", json={"app_nam": "x", "org_slug": "fake-org"})
        body_on_start = await client.post("/v1/apps/x/machines/y/start", json={"now": True})
        unknown_query = await client.get("/v1/apps/x/machines", params={"state": "started"})
        no_such_verb = await client.patch("/v1/apps/x")
    for response in (misspelt, body_on_start, unknown_query, no_such_verb):
        assert response.status_code == 400
        assert "outside the spec" in response.json()["error"]
    assert len(fake_fly.violations) == 4
    assert "app_nam" in fake_fly.violations[0]
    assert fake_fly.apps == {}
    fake_fly.violations.clear()  # seen and expected: the fixture checks the rest


async def test_a_start_with_a_bigger_spec_resizes_the_machine_and_keeps_the_workspace(
    fly_driver: FlyDriver, fake_fly: FakeFlyMachinesAPI
) -> None:
    spec = new_spec(memory_mb=1024)
    vm = (await fly_driver.create_project_vm(spec)).vm_id
    async with GuestClient(await fly_driver.open_channel(vm)) as client:
        await client.write_file("kept.txt", b"still here")
    await fly_driver.stop_project_vm(vm)
    await fly_driver.start_project_vm(vm, spec.model_copy(update={"cpus": 2, "memory_mb": 2048}))
    [machine] = fake_fly.live_machines()
    assert machine.config["guest"] == {"cpu_kind": "shared", "cpus": 2, "memory_mb": 2048}
    assert machine.state == "started"
    async with GuestClient(await fly_driver.open_channel(vm)) as client:
        assert (await client.read_file("kept.txt")).data == b"still here"


async def test_a_start_with_nothing_changed_does_not_update_the_machine(
    fly_driver: FlyDriver, fake_fly: FakeFlyMachinesAPI
) -> None:
    spec = new_spec()
    vm = (await fly_driver.create_project_vm(spec)).vm_id
    await fly_driver.stop_project_vm(vm)
    await fly_driver.start_project_vm(vm, spec)
    [machine] = fake_fly.live_machines()
    updates = [
        r
        for r in fake_fly.requests
        if r == ("POST", f"/v1/apps/{machine.app}/machines/{machine.id}")
    ]
    assert updates == []


async def test_an_old_agent_in_the_machine_config_is_replaced_at_the_next_start(
    fly_driver: FlyDriver, fake_fly: FakeFlyMachinesAPI
) -> None:
    vm = (await fly_driver.create_project_vm(new_spec())).vm_id
    await fly_driver.stop_project_vm(vm)
    [machine] = fake_fly.live_machines()
    # What an older ProjectVM injected (here: not even a working program).
    machine.config["files"][0]["raw_value"] = "b2xkIGFnZW50"
    version = machine.instance_id
    await fly_driver.start_project_vm(vm)
    assert machine.instance_id != version
    async with GuestClient(await fly_driver.open_channel(vm)) as client:
        assert (await client.hello()).protocol_version == 1
