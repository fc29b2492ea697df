"""fake-limactl keeps to Lima 2.x's contract as the research notes record it (a fake that drifts
from the real thing would let the driver pass for the wrong reasons)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import anyio
import pytest

from tests.fakes.lima import FAKE_DEADLINE_S, FAKE_LIMACTL

pytestmark = pytest.mark.anyio


async def limactl(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(FAKE_DEADLINE_S):
        return await anyio.run_process(
            [str(FAKE_LIMACTL), "--tty=false", "--log-format=json", *args],
            stdin=subprocess.DEVNULL,
            check=False,
            env={**os.environ, "LIMA_HOME": str(home)},
        )


def fatal_message(result: subprocess.CompletedProcess[bytes]) -> str:
    [line] = [json.loads(line) for line in result.stderr.splitlines() if b'"fatal"' in line]
    assert line["level"] == "fatal"
    return str(line["msg"])


async def test_version_and_info_answer_like_lima_2(lima_home: Path) -> None:
    version = await limactl(lima_home, "--version")
    assert version.stdout.decode().strip() == "limactl version 2.2.0"
    info = json.loads((await limactl(lima_home, "info")).stdout)
    assert info["limaHome"] == str(lima_home)
    assert info["version"] == "2.2.0"


async def test_list_prints_nothing_without_instances_and_fails_for_unknown_names(
    lima_home: Path,
) -> None:
    empty = await limactl(lima_home, "list", "--json")
    assert (empty.returncode, empty.stdout) == (0, b"")
    assert b"No instance found" in empty.stderr
    await limactl(lima_home, "create", "--name=one", "template:default")
    unknown = await limactl(lima_home, "list", "--json", "one", "two")
    assert unknown.returncode == 1
    assert b"No instance matching two found" in unknown.stderr
    [line] = unknown.stdout.decode().splitlines()  # one JSON object per line
    described = json.loads(line)
    assert described["name"] == "one"
    assert described["status"] == "Stopped"
    for field in ("dir", "vmType", "arch", "cpus", "memory", "disk", "config", "limaVersion"):
        assert field in described


async def test_start_on_a_missing_name_creates_an_instance_from_the_default_template(
    lima_home: Path,
) -> None:
    started = await limactl(lima_home, "start", "surprise")
    assert started.returncode == 0
    assert b"template://default" in started.stderr
    described = json.loads((await limactl(lima_home, "list", "--json", "surprise")).stdout)
    assert described["status"] == "Running"
    assert described["config"]["mounts"]  # the default template mounts the home directory
    again = await limactl(lima_home, "start", "surprise")
    assert again.returncode == 0
    assert b"already running" in again.stderr


async def test_stop_on_a_stopped_instance_fails_and_stop_force_does_not(lima_home: Path) -> None:
    await limactl(lima_home, "create", "--name=one", "template:default")
    stopped = await limactl(lima_home, "stop", "one")
    assert stopped.returncode == 1
    assert "maybe use `limactl stop -f`" in fatal_message(stopped)
    assert (await limactl(lima_home, "stop", "-f", "one")).returncode == 0


async def test_create_twice_fails_and_deleting_a_missing_instance_only_warns(
    lima_home: Path,
) -> None:
    assert (await limactl(lima_home, "create", "--name=one", "template:default")).returncode == 0
    twice = await limactl(lima_home, "create", "--name=one", "template:default")
    assert twice.returncode == 1
    assert "already exists" in fatal_message(twice)
    missing = await limactl(lima_home, "delete", "nothing-here")
    assert missing.returncode == 0
    assert b"Ignoring non-existent instance" in missing.stderr


async def test_an_unused_param_is_refused_at_create(lima_home: Path, tmp_path: Path) -> None:
    config = tmp_path / "lima.yaml"
    config.write_text(json.dumps({"param": {"Unused": "x"}, "provision": []}))
    refused = await limactl(lima_home, "create", "--name=one", str(config))
    assert refused.returncode == 1
    assert "is not used in any provision" in fatal_message(refused)


async def test_shell_passes_exit_codes_and_a_stopped_instance_is_refused(lima_home: Path) -> None:
    await limactl(lima_home, "create", "--name=one", "template:default")
    refused = await limactl(lima_home, "shell", "one", "true")
    assert refused.returncode == 1
    assert "is stopped" in fatal_message(refused)
    await limactl(lima_home, "start", "one")
    assert (await limactl(lima_home, "shell", "one", "sh", "-c", "exit 7")).returncode == 7
    workdir = await limactl(lima_home, "shell", "--workdir", "/nope", "one", "true")
    assert workdir.returncode == 1  # `cd DIR || exit 1`, as Lima's ssh script does
    home = await limactl(lima_home, "shell", "one", "pwd")
    assert home.stdout.decode().strip().startswith("/home/")


async def test_stopping_ends_every_process_in_the_instance(lima_home: Path) -> None:
    await limactl(lima_home, "start", "one")
    async with await anyio.open_process(
        [str(FAKE_LIMACTL), "shell", "one", "sh", "-c", "echo up; exec sleep 613"],
        env={**os.environ, "LIMA_HOME": str(lima_home)},
    ) as session:
        assert session.stdout is not None
        with anyio.fail_after(30):
            assert await session.stdout.receive() == b"up\n"
        assert (await limactl(lima_home, "stop", "one")).returncode == 0
        with anyio.fail_after(30):
            await session.wait()
        assert session.returncode == 255  # ssh's "connection closed"
    listing = (await anyio.run_process(["ps", "-eo", "args"])).stdout
    assert b"sleep 613" not in listing
