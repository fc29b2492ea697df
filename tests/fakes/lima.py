"""A fake Lima for tests: ``fake-limactl`` in a private, short ``LIMA_HOME``.

``per_project_environment`` and ``shared_environment`` yield the lima driver's options for each
mode (the shared one also makes and starts the shared instance); on exit every fake instance is
deleted, which ends its VM sandbox and every process in it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

__all__ = [
    "FAKE_DEADLINE_S",
    "FAKE_LIMACTL",
    "SHARED_INSTANCE",
    "TEST_PACKAGES",
    "calls",
    "commands_share_the_agents_user",
    "driver_options",
    "fake_lima_home",
    "fake_limactl",
    "fake_limactl_with",
    "missing_tools",
    "per_project_environment",
    "raw_calls",
    "shared_environment",
]

FAKE_LIMACTL = Path(__file__).with_name("fake-limactl")
# Installed here already, so the provisioning script finds them and needs no apt.
TEST_PACKAGES = ["python3", "git", "curl", "procps"]
FAKE_DEADLINE_S = 120
SHARED_INSTANCE = "shared"  # the instance shared_environment makes


def missing_tools() -> str | None:
    """Why the fake cannot run here, or None."""
    for tool, package in (("bwrap", "bubblewrap"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"fake-limactl needs {tool} (apt-get install {package})"
    if not Path("/usr/bin/python3").is_file():
        return "fake-limactl needs /usr/bin/python3 (apt-get install python3)"
    return None


def commands_share_the_agents_user(limactl: str) -> str | None:
    """Why commands cannot run apart from the agent on ``limactl`` (the fake unprivileged), or
    None: the launcher then warns in the VM's log and doctor, and isolation tests skip."""
    if Path(limactl).resolve() != FAKE_LIMACTL.resolve():
        return None
    from tests.fakes.fake_limactl import single_uid_reason

    return single_uid_reason()


async def fake_limactl(home: Path, *args: str, check: bool = True) -> str:
    """Run the fake with ``home`` as LIMA_HOME; its stdout."""
    with anyio.fail_after(FAKE_DEADLINE_S):
        result = await anyio.run_process(
            [str(FAKE_LIMACTL), "--tty=false", *args],
            stdin=subprocess.DEVNULL,
            check=False,
            env={**os.environ, "LIMA_HOME": str(home)},
        )
    if check and result.returncode != 0:
        raise AssertionError(
            f"fake-limactl {' '.join(args)} failed ({result.returncode}): "
            f"{result.stderr.decode(errors='replace')}"
        )
    return result.stdout.decode()


def fake_limactl_with(directory: Path, **environment: str) -> Path:
    """A limactl that is the fake run with ``environment`` (its knobs), to pass as an option."""
    assignments = " ".join(f"{key}={shlex.quote(value)}" for key, value in environment.items())
    path = directory / "limactl"
    path.write_text(f'#!/bin/sh\nexec env {assignments} {shlex.quote(str(FAKE_LIMACTL))} "$@"\n')
    path.chmod(0o755)
    return path


def raw_calls(home: Path) -> list[list[str]]:
    """Every command line the fake ran in ``home``, oldest first, exactly as given."""
    path = home / "_fake" / "calls.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["argv"] for line in path.read_text().splitlines()]


def calls(home: Path) -> list[list[str]]:
    """Like ``raw_calls``, without the global flags (--tty, --log-format)."""
    return [
        [arg for arg in argv if not arg.startswith(("--tty", "--log"))] for argv in raw_calls(home)
    ]


@asynccontextmanager
async def fake_lima_home() -> AsyncIterator[Path]:
    # Short on purpose, like a real LIMA_HOME: Lima's socket paths under it must fit 104 bytes.
    home = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="lima-")))
    try:
        yield home
    finally:
        with anyio.CancelScope(shield=True):
            names = (await fake_limactl(home, "list", "-q", check=False)).split()
            if names:
                await fake_limactl(home, "delete", "-f", *names, check=False)
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(home, ignore_errors=True))


def driver_options(home: Path, **overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "limactl": str(FAKE_LIMACTL),
        "lima_home": str(home),
        "shared_instance": None,
        "templates": {"development": {"packages": TEST_PACKAGES}},
        "create_timeout_s": 60,
        "start_timeout_s": 60,
        "stop_timeout_s": 30,
        "command_timeout_s": 30,
    }
    options.update(overrides)
    return options


@asynccontextmanager
async def per_project_environment(**overrides: Any) -> AsyncIterator[dict[str, Any]]:
    """Options for the lima driver in per-project mode, on the fake."""
    async with fake_lima_home() as home:
        yield driver_options(home, **overrides)


@asynccontextmanager
async def shared_environment(**overrides: Any) -> AsyncIterator[dict[str, Any]]:
    """Options for the lima driver in shared mode, with the shared instance made and started."""
    async with fake_lima_home() as home:
        await fake_limactl(home, "create", f"--name={SHARED_INSTANCE}", "template:debian-12")
        await fake_limactl(home, "start", SHARED_INSTANCE)
        yield driver_options(home, shared_instance=SHARED_INSTANCE, **overrides)
