"""The `projectvm` command line, run as a real subprocess."""

from __future__ import annotations

import getpass
import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from server import __version__
from server.core.agents import Agents
from server.store import Store

pytestmark = pytest.mark.anyio


async def projectvm(data_dir: Path, *args: str, check: bool = True) -> tuple[int, str, str]:
    result = await anyio.run_process(
        [sys.executable, "-m", "server.cli", "--data-dir", str(data_dir), *args],
        check=False,
        env={**os.environ},
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    if check:
        assert result.returncode == 0, err
    return result.returncode, out, err


async def test_version(data_dir: Path) -> None:
    _, out, _ = await projectvm(data_dir, "version")
    assert out.strip() == f"projectvm {__version__}"


async def test_agent_tokens_are_shown_once_and_only_hashes_are_stored(data_dir: Path) -> None:
    _, out, _ = await projectvm(data_dir, "agents", "add", "bob", "--quiet")
    token = out.strip()
    assert token.startswith("pvm_")
    code, _, err = await projectvm(data_dir, "agents", "add", "bob", check=False)
    assert code == 1
    assert "projectvm agents token bob" in err
    database = (data_dir / "projectvm.db").read_bytes()
    assert token.encode() not in database
    with sqlite3.connect(data_dir / "projectvm.db") as raw:
        [(owner,)] = raw.execute("SELECT user_id FROM agents WHERE agent_id = 'bob'").fetchall()
        assert owner == getpass.getuser()
        assert raw.execute("SELECT name FROM users").fetchall() == [(owner,)]
    async with await Store.open(data_dir / "projectvm.db") as store:
        assert await Agents(store).resolve(token) == "bob"
    _, out, _ = await projectvm(data_dir, "agents", "token", "bob", "--quiet")
    async with await Store.open(data_dir / "projectvm.db") as store:
        assert await Agents(store).resolve(token) is None
        assert await Agents(store).resolve(out.strip()) == "bob"
    _, listing, _ = await projectvm(data_dir, "agents", "list")
    assert listing.startswith("bob")
    _, out, _ = await projectvm(data_dir, "agents", "remove", "bob")
    assert "no longer works" in out
    code, _, err = await projectvm(data_dir, "agents", "add", "Bad Name", check=False)
    assert code == 1
    assert "not a valid agent name" in err


async def test_doctor_reports_each_driver_and_the_choice(
    data_dir: Path, requires_bwrap: None
) -> None:
    _, out, _ = await projectvm(data_dir, "doctor", "--json")
    report = json.loads(out)
    drivers = {row["driver"]: row for row in report["drivers"]}
    assert drivers["local"]["usable"] is True
    assert "bwrap" in drivers["local"]["details"]
    assert report["selected"] in drivers
    docker_row = drivers["docker"]
    if docker_row["details"].get("engine"):
        # An engine answers here: doctor names it, its version, and the image's presence.
        assert docker_row["details"]["api"]
        assert any(key.startswith("image projectvm/runtime") for key in docker_row["details"])
    else:
        assert "engine" in docker_row["reason"]
        assert "DOCKER_HOST" in docker_row["reason"]  # and how to point us at one
    _, text, _ = await projectvm(data_dir, "doctor")
    assert "local" in text
    assert "new projects will use" in text


async def test_projects_list_on_an_empty_data_dir(data_dir: Path) -> None:
    _, out, _ = await projectvm(data_dir, "projects", "list")
    assert out.strip() == "no projects"


async def serve_fails(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `projectvm serve ARGS` that must fail at start-up; return its one line of error."""
    result = await anyio.run_process(
        [sys.executable, "-m", "server.cli", "--data-dir", str(data_dir), "serve", *args],
        check=False,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


async def test_every_start_up_failure_is_one_clear_line(data_dir: Path) -> None:
    line = await serve_fails(data_dir, "--driver", "bogus")
    assert "bogus" in line
    assert "choose one of" in line
    line = await serve_fails(data_dir, env={"VM_SERVICE": "bogus"})
    assert "VM_SERVICE=bogus" in line
    line = await serve_fails(data_dir, env={"VM_SERVICE": "firecracker"})
    assert "firecracker" in line
    assert "VM_SERVICE=firecracker" in line
    assert "auto" not in line
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "config.toml").write_text("driver = [")
    line = await serve_fails(data_dir)
    assert "config.toml" in line
    (data_dir / "config.toml").unlink()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        line = await serve_fails(data_dir, "--http", "--port", port, "--driver", "process")
    assert f"127.0.0.1:{port}" in line
    assert "--port" in line


async def test_production_without_fly_settings_says_what_to_set(data_dir: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLY_")}
    result = await anyio.run_process(
        [sys.executable, "-m", "server.cli", "--data-dir", str(data_dir), "serve"],
        check=False,
        env={**clean, "VM_SERVICE": "production"},
        stdin=subprocess.DEVNULL,
    )
    err = result.stderr.decode()
    assert result.returncode == 1
    assert "FLY_API_TOKEN" in err
    assert "FLY_APP_NAME" in err
    assert "Traceback" not in err
