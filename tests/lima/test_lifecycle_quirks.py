"""The lima driver against Lima 2.x's traps and failures, through fake-limactl."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from tests.conformance.conftest import spec
from tests.fakes.lima import calls, fake_limactl, fake_limactl_with, raw_calls
from vm_drivers.base import LABEL_PROJECT, VMStatus
from vm_drivers.errors import (
    DriverConfigError,
    DriverUnavailable,
    VMCreationFailed,
    VMOperationFailed,
)
from vm_drivers.lima import LimaDriver
from vm_drivers.lima.records import instance_name

from .conftest import MakeDriver

pytestmark = pytest.mark.anyio


def instance_of(driver: LimaDriver, vm_id: str) -> str:
    return driver.records.load(vm_id).instance


async def fake_status(home: Path, name: str) -> str | None:
    output = await fake_limactl(home, "list", "--json", name, check=False)
    return json.loads(output)["status"] if output.strip() else None


async def test_the_driver_refuses_limactl_1x_with_a_clear_message(
    make_driver: MakeDriver, tmp_path: Path
) -> None:
    old = fake_limactl_with(tmp_path, FAKE_LIMACTL_VERSION="1.0.6")
    driver = await make_driver(limactl=str(old))
    availability = await driver.probe()
    assert not availability.usable
    assert "1.0.6 is too old" in availability.reason
    assert "brew upgrade lima" in availability.reason
    with pytest.raises(DriverUnavailable, match="too old"):
        await driver.create_project_vm(spec())


async def test_limactl_refusing_root_is_reported_with_what_to_do(
    make_driver: MakeDriver, tmp_path: Path
) -> None:
    as_root = fake_limactl_with(tmp_path, FAKE_LIMACTL_AS_ROOT="1")
    driver = await make_driver(limactl=str(as_root))
    availability = await driver.probe()
    assert not availability.usable
    assert "must not run as the root user" in availability.reason
    assert "normal user" in availability.reason


async def test_calls_are_non_interactive_and_each_verb_follows_a_list(
    driver: LimaDriver, lima_home: Path
) -> None:
    created = await driver.create_project_vm(spec())
    name = instance_of(driver, created.vm_id)
    await driver.stop_project_vm(created.vm_id)
    await driver.start_project_vm(created.vm_id)
    await driver.destroy_project_vm(created.vm_id)
    made = [argv for argv in raw_calls(lima_home) if argv[0] != "hostagent"]
    assert made
    assert all(argv[:2] == ["--tty=false", "--log-format=json"] for argv in made)
    history = calls(lima_home)
    for index, argv in enumerate(history):
        if argv[0] in ("create", "start", "stop"):
            assert history[index - 1][:2] == ["list", "--json"], argv
            assert name in history[index - 1]
    [create] = [argv for argv in history if argv[0] == "create"]
    assert create[1] == f"--name={name}"
    assert create[2].endswith(f"{name}.yaml")


async def test_start_never_runs_on_an_instance_deleted_behind_the_drivers_back(
    driver: LimaDriver, lima_home: Path
) -> None:
    created = await driver.create_project_vm(spec())
    name = instance_of(driver, created.vm_id)
    await fake_limactl(lima_home, "delete", "-f", name)
    before = len(calls(lima_home))
    assert await driver.get_vm_status(created.vm_id) == VMStatus.FAILED
    with pytest.raises(VMOperationFailed, match="does not exist"):
        await driver.start_project_vm(created.vm_id)
    assert not [argv for argv in calls(lima_home)[before:] if argv[0] == "start"]
    assert await fake_status(lima_home, name) is None  # no empty instance was made
    await driver.destroy_project_vm(created.vm_id)


async def test_stopping_a_vm_already_stopped_outside_is_not_an_error(
    driver: LimaDriver, lima_home: Path
) -> None:
    created = await driver.create_project_vm(spec())
    name = instance_of(driver, created.vm_id)
    await fake_limactl(lima_home, "stop", name)
    before = len(calls(lima_home))
    await driver.stop_project_vm(created.vm_id)
    assert not [argv for argv in calls(lima_home)[before:] if argv[0] == "stop"]
    assert await driver.get_vm_status(created.vm_id) == VMStatus.STOPPED
    # Starting one that was started outside is just as quiet.
    await fake_limactl(lima_home, "start", name)
    before = len(calls(lima_home))
    await driver.start_project_vm(created.vm_id)
    assert not [argv for argv in calls(lima_home)[before:] if argv[0] == "start"]
    await driver.destroy_project_vm(created.vm_id)


async def test_an_instance_of_the_same_name_that_is_not_ours_is_left_alone(
    driver: LimaDriver, lima_home: Path
) -> None:
    wanted = spec()
    name = instance_name("pvm-", driver.context.instance_id, wanted.project_id)
    await fake_limactl(lima_home, "create", f"--name={name}", "template:default")
    with pytest.raises(VMCreationFailed, match="not this VM's"):
        await driver.create_project_vm(wanted)
    assert await fake_status(lima_home, name) == "Stopped"
    assert driver.records.all() == []


async def test_a_failed_provisioning_leaves_no_instance_and_says_why(
    driver: LimaDriver, lima_home: Path
) -> None:
    # Lima merges provision entries from $LIMA_HOME/_config/default.yaml into every instance.
    config_dir = lima_home / "_config"
    config_dir.mkdir()
    failing = {"mode": "system", "script": "#!/bin/sh\necho the mirror is down >&2\nexit 3\n"}
    (config_dir / "default.yaml").write_text(json.dumps({"provision": [failing]}))
    wanted = spec()
    with pytest.raises(VMCreationFailed, match="the mirror is down"):
        await driver.create_project_vm(wanted)
    name = instance_name("pvm-", driver.context.instance_id, wanted.project_id)
    assert await fake_status(lima_home, name) is None
    assert driver.records.all() == []


async def test_a_boot_that_hangs_is_forced_down_retried_once_then_reported(
    make_driver: MakeDriver, lima_home: Path
) -> None:
    config_dir = lima_home / "_config"
    config_dir.mkdir()
    hanging = {"mode": "system", "script": "#!/bin/sh\nexec sleep 600\n"}
    (config_dir / "default.yaml").write_text(json.dumps({"provision": [hanging]}))
    driver = await make_driver(create_timeout_s=1)
    wanted = spec()
    with anyio.fail_after(60), pytest.raises(VMCreationFailed, match="running"):
        await driver.create_project_vm(wanted)
    verbs = [argv[:2] for argv in calls(lima_home) if argv[0] in ("start", "stop", "delete")]
    start = ["start", "--timeout=1s"]
    assert verbs == [start, ["stop", "-f"], start, ["delete", "-f"]]
    name = instance_name("pvm-", driver.context.instance_id, wanted.project_id)
    assert await fake_status(lima_home, name) is None


async def test_a_lima_home_too_long_for_its_sockets_is_refused_before_any_create(
    make_driver: MakeDriver, lima_home: Path
) -> None:
    deep = lima_home / ("d" * 90)
    deep.mkdir()
    driver = await make_driver(lima_home=str(deep))
    with pytest.raises(DriverConfigError, match="shorter directory"):
        await driver.create_project_vm(spec())
    assert not (await driver.probe()).usable
    assert not [argv for argv in calls(deep) if argv[0] == "create"]


async def test_a_broken_instance_is_a_failed_vm_that_does_not_start(
    driver: LimaDriver, lima_home: Path
) -> None:
    created = await driver.create_project_vm(spec())
    name = instance_of(driver, created.vm_id)
    await driver.stop_project_vm(created.vm_id)
    (lima_home / name / "lima.yaml").write_text("{ not yaml in any form")
    assert await driver.get_vm_status(created.vm_id) == VMStatus.FAILED
    with pytest.raises(VMOperationFailed, match="Broken"):
        await driver.start_project_vm(created.vm_id)
    await driver.destroy_project_vm(created.vm_id)
    assert await fake_status(lima_home, name) is None


async def test_a_vm_whose_record_was_lost_is_still_listed_and_can_be_destroyed(
    driver: LimaDriver, lima_home: Path
) -> None:
    wanted = spec()
    created = await driver.create_project_vm(wanted)
    name = instance_of(driver, created.vm_id)
    driver.records.delete(created.vm_id)
    [stray] = [info for info in await driver.list_vms() if info.vm_id == created.vm_id]
    assert stray.labels[LABEL_PROJECT] == wanted.project_id
    assert "without a VM record" in stray.detail
    await driver.destroy_project_vm(created.vm_id)
    assert await fake_status(lima_home, name) is None
    assert created.vm_id not in {info.vm_id for info in await driver.list_vms()}


async def test_labels_are_kept_inside_the_vm_too(driver: LimaDriver, lima_home: Path) -> None:
    wanted = spec()
    created = await driver.create_project_vm(wanted)
    name = instance_of(driver, created.vm_id)
    inside = await fake_limactl(lima_home, "shell", name, "cat", "/opt/projectvm/labels.json")
    assert json.loads(inside)[LABEL_PROJECT] == wanted.project_id
    await driver.destroy_project_vm(created.vm_id)
