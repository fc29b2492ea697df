"""The guest-side launcher, run here directly: it needs only Python, like in a Lima guest."""

from __future__ import annotations

import ast
import json
import os
import pwd
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from guest_runtime.bundle import write_agent_zipapp
from guest_runtime.client import GuestClient
from guest_runtime.errors import GuestUnreachable
from vm_drivers.lima import guest_launcher
from vm_drivers.lima.channel import LauncherExited, LimaChannel, open_launcher, terminate

pytestmark = pytest.mark.anyio

LAUNCHER = Path(guest_launcher.__file__)
MARKER = "test-marker-0123"


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "workspace").mkdir()
    agent = write_agent_zipapp(tmp_path / "built")
    return {
        "agent": str(tmp_path / "agents" / agent.name),
        "staged": str(tmp_path / "agents" / agent.name) + ".incoming",
        "root": str(tmp_path / "workspace"),
        "pidfile": str(tmp_path / "agent.pid"),
        "project_id": "prj_launcher",
        "sandbox": "none",
        "marker": MARKER,
        "built": str(agent),
    }


def stage(layout: dict[str, Any]) -> None:
    Path(layout["staged"]).parent.mkdir(parents=True, exist_ok=True)
    Path(layout["staged"]).write_bytes(Path(layout["built"]).read_bytes())


async def launch(
    layout: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None
) -> LimaChannel:
    options = {key: value for key, value in layout.items() if key != "built"}
    return await open_launcher(
        [sys.executable, str(LAUNCHER), json.dumps(options)],
        env=env or {"PATH": "/usr/bin:/bin"},
        marker=MARKER.encode(),
        log_path=tmp_path / "launcher.log",
        timeout_s=30,
    )


@pytest.fixture
async def channels() -> AsyncIterator[list[LimaChannel]]:
    opened: list[LimaChannel] = []
    try:
        yield opened
    finally:
        for channel in opened:
            await terminate(channel.process)


async def test_a_missing_agent_is_asked_for_and_a_staged_one_is_put_in_place(
    layout: dict[str, Any], tmp_path: Path, channels: list[LimaChannel]
) -> None:
    with pytest.raises(LauncherExited) as exited:
        await launch(layout, tmp_path)
    assert exited.value.code == guest_launcher.AGENT_MISSING
    assert "not at" in exited.value.log_tail
    stage(layout)
    channels.append(await launch(layout, tmp_path))
    assert Path(layout["agent"]).is_file()
    assert not Path(layout["staged"]).exists()
    async with GuestClient(channels[0]) as client:
        info = await client.hello()
    assert info.root == layout["root"]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"root": "/does/not/exist"}, guest_launcher.WORKSPACE_MISSING),
        ({"sandbox": "bwrap"}, guest_launcher.SANDBOX_MISSING),
        ({"marker": None, "pidfile": None}, guest_launcher.BAD_OPTIONS),
    ],
)
async def test_what_is_missing_is_told_by_the_exit_status(
    layout: dict[str, Any], tmp_path: Path, change: dict[str, Any], code: int
) -> None:
    stage(layout)
    for key, value in change.items():
        if value is None:
            del layout[key]
        else:
            layout[key] = value
    with pytest.raises(LauncherExited) as exited:
        # No bwrap on this PATH: "sandbox: bwrap" cannot be met.
        await launch(layout, tmp_path, env={"PATH": str(tmp_path / "empty-bin")})
    assert exited.value.code == code


async def test_a_second_launch_ends_the_first_agent_and_its_commands(
    layout: dict[str, Any], tmp_path: Path, channels: list[LimaChannel]
) -> None:
    stage(layout)
    first = await launch(layout, tmp_path)
    channels.append(first)
    async with GuestClient(first) as client:
        handle = await client.start_exec("echo started; exec sleep 987")
        with anyio.fail_after(30):
            async for event in handle.events():
                if getattr(event, "data", b"") == b"started\n":
                    break
        second = await launch(layout, tmp_path)
        channels.append(second)
        with anyio.fail_after(30), pytest.raises(GuestUnreachable):
            async for _ in handle.events():
                pass
    with anyio.fail_after(30):
        await first.process.wait()
    listing = (await anyio.run_process(["ps", "-eo", "args"])).stdout
    assert b"sleep 987" not in listing


async def test_a_recycled_pid_in_the_pidfile_is_left_alone(
    layout: dict[str, Any], tmp_path: Path, channels: list[LimaChannel]
) -> None:
    stage(layout)
    bystander = await anyio.open_process(["sleep", "300"])
    try:
        Path(layout["pidfile"]).write_text(f"{bystander.pid}\n")
        channels.append(await launch(layout, tmp_path))
        assert bystander.returncode is None
        assert Path(layout["pidfile"]).read_text().strip() == str(channels[0].process.pid)
    finally:
        bystander.kill()
        await bystander.wait()


async def test_output_before_the_marker_is_dropped(
    layout: dict[str, Any], tmp_path: Path, channels: list[LimaChannel]
) -> None:
    stage(layout)
    options = {key: value for key, value in layout.items() if key != "built"}
    noisy = f"echo 'Welcome to the VM'; printf 'no newline'; exec {sys.executable} \"$@\""
    channel = await open_launcher(
        ["sh", "-c", noisy, "sh", str(LAUNCHER), json.dumps(options)],
        env={"PATH": "/usr/bin:/bin"},
        marker=MARKER.encode(),
        log_path=tmp_path / "launcher.log",
        timeout_s=30,
    )
    channels.append(channel)
    async with GuestClient(channel) as client:
        assert (await client.hello()).root == layout["root"]
    assert "Welcome to the VM" in (tmp_path / "launcher.log").read_text()


def test_the_launcher_stays_python_3_8_and_stdlib_only() -> None:
    source = LAUNCHER.read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert imported <= {
        *("__future__", "grp", "hashlib", "json", "os", "pwd", "re", "shutil", "signal"),
        *("subprocess", "sys", "time", "typing"),
    }
    assert ".removeprefix(" not in source  # 3.9


def test_the_agent_gets_run_as_the_command_user_in_the_instance_and_in_a_sandbox(
    layout: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    user = pwd.getpwnam("nobody")
    monkeypatch.setattr(guest_launcher, "ensure_user", lambda name: pwd.getpwnam(name))
    monkeypatch.setattr(guest_launcher, "mapped_uids", lambda: 1 << 32)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    options = {**layout, "command_user": "nobody"}
    run_as, status = guest_launcher.command_identity(options)
    assert run_as == f"{user.pw_uid}:{user.pw_gid}"
    assert status.startswith("separate: commands run as nobody")
    monkeypatch.chdir(layout["root"])
    direct = guest_launcher.agent_command(options, layout["agent"], layout["root"], run_as)
    assert direct[-2:] == ["--run-as", run_as]
    sandboxed = guest_launcher.sandbox_argv(
        options, "bwrap", layout["agent"], layout["root"], run_as
    )
    assert sandboxed[-2:] == ["--run-as", run_as]
    # The sandbox keeps what the agent needs to switch to the command user and signal it.
    kept = {sandboxed[i + 1] for i, arg in enumerate(sandboxed) if arg == "--cap-add"}
    assert {"CAP_SETUID", "CAP_SETGID", "CAP_KILL"} <= kept


def test_where_one_uid_is_mapped_the_launcher_warns_that_commands_share_the_agents_user(
    layout: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(guest_launcher, "mapped_uids", lambda: 1)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    run_as, status = guest_launcher.command_identity({**layout, "command_user": "pvm"})
    assert run_as is None
    assert status.startswith("shared: ")
    assert "WARNING" in capsys.readouterr().err
    assert "NOT separated" in status


async def test_without_passwordless_sudo_the_launcher_says_what_to_do(
    layout: dict[str, Any], tmp_path: Path
) -> None:
    # A sudo that asks for a password, for a launcher run by an unprivileged user.
    bin_dir = Path(tempfile.mkdtemp(prefix="lima-runas-sudo-"))
    try:
        bin_dir.chmod(0o755)
        sudo = bin_dir / "sudo"
        sudo.write_text("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
        sudo.chmod(0o755)
        options = {key: value for key, value in layout.items() if key != "built"}
        options["command_user"] = "pvm"
        nobody = pwd.getpwnam("nobody")
        as_nobody = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}"]
        launcher = [sys.executable, "-c", LAUNCHER.read_text(), json.dumps(options)]
        result = await anyio.run_process(
            [*as_nobody, "--clear-groups", *launcher],
            env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
            check=False,
        )
    finally:
        shutil.rmtree(bin_dir)
    assert result.returncode == guest_launcher.NEEDS_ROOT, result.stderr
    said = result.stderr.decode()
    assert "a password is required" in said
    assert "passwordless sudo" in said
