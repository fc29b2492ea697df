"""The local sandbox no longer sees the host, is nobody on the host, keeps the agent's channel
out of reach, and leaves no cgroup behind (issue 10 item 6; issue 9 findings 2 and 20).

Each runs on both of the sandbox's roots: the minimal view of the host, and the runtime
image's Debian tree.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from guest_runtime.client import GuestClient
from server.domain.config import ServerConfig
from server.surfaces.mcp.server import build_server
from tests.conformance.conftest import spec
from tests.helpers import call, outside_address
from vm_drivers.base import DriverContext
from vm_drivers.cgroups import Cgroups
from vm_drivers.local import LocalDriver
from vm_drivers.registry import DriverSet
from vm_drivers.sandbox.identity import COMMAND_UID

pytestmark = pytest.mark.anyio

both_roots = pytest.mark.parametrize("server_backend", ["local", "local-image"], indirect=True)

Owner = tuple[Client, str, LocalDriver]


@pytest.fixture
async def local_owner(driver_config: ServerConfig) -> AsyncIterator[Owner]:
    """alice with a fresh project on the local driver (deleted afterwards), and the driver."""
    handle = build_server(driver_config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        project_id = (await call(client, "create_project", name="sandbox"))["project_id"]
        assert handle.state is not None
        driver = handle.state.service.drivers.get("local")
        assert isinstance(driver, LocalDriver)
        try:
            yield client, project_id, driver
        finally:
            await call(client, "delete_project", project_id=project_id)


@pytest.fixture
def host_markers() -> Iterator[dict[Path, str]]:
    """Secret files in /var/tmp, /opt and /srv on the host (made here, removed after)."""
    token = secrets.token_hex(8)
    made: dict[Path, str] = {}
    made_dirs: list[Path] = []
    try:
        for directory in (Path("/var/tmp"), Path("/opt"), Path("/srv")):
            if not directory.exists():
                directory.mkdir()
                made_dirs.append(directory)
            marker = directory / f"projectvm-marker-{token}"
            marker.write_text(f"host secret {token}\n")
            made[marker] = token
        yield made
    finally:
        for marker in made:
            marker.unlink(missing_ok=True)
        for directory in made_dirs:
            shutil.rmtree(directory, ignore_errors=True)


async def run(client: Client, project_id: str, command: str) -> dict[str, object]:
    return await call(client, "run_command", project_id=project_id, command=command, timeout_s=60)


@both_roots
async def test_a_command_cannot_read_what_the_host_keeps_outside_the_sandbox(
    local_owner: Owner, host_markers: dict[Path, str], driver_config: ServerConfig
) -> None:
    client, project_id, _ = local_owner
    secrets_on_host = [*host_markers, Path("/etc/shadow"), driver_config.data_dir / "projectvm.db"]
    for path in secrets_on_host:
        read = await run(client, project_id, f"cat {path}")
        assert read["exit_code"] != 0, f"{path} is readable: {read}"
        assert "host secret" not in str(read["stdout"])
        assert "root:" not in str(read["stdout"])
        listed = await run(client, project_id, f"ls -a {path.parent}")
        assert path.name not in str(listed["stdout"]), f"{path.parent} shows it: {listed}"
    listing = await run(client, project_id, "ls /")
    assert "workspace" in str(listing["stdout"])


@both_roots
async def test_the_host_sees_the_sandbox_processes_under_an_unprivileged_uid(
    local_owner: Owner,
) -> None:
    client, project_id, driver = local_owner
    seconds = f"1000.{secrets.randbelow(10**6)}"
    # Returns once the detached sleep has replaced its forked shell (a real round trip).
    await run(
        client,
        project_id,
        f"nohup sleep {seconds} >/dev/null 2>&1 & "
        'until [ "$(cat /proc/$!/comm 2>/dev/null)" = sleep ]; do :; done',
    )
    [sleeper] = [pid for pid in _pids() if _cmdline(pid) == ["sleep", seconds]]
    bubblewrap = _ancestors_in_sandbox(sleeper)
    sandbox = [sleeper, *bubblewrap, *_children(bubblewrap[0])]  # the agent is init's child
    uids = {pid: _uids(pid) for pid in sandbox}
    assert all(0 not in ids for ids in uids.values()), uids
    if os.geteuid() == 0:
        base = driver.identity.uid_base
        expected = base + (COMMAND_UID if driver.identity.run_as else 0)
        assert uids[sleeper] == {expected}
        assert all(min(ids) >= base for ids in uids.values()), uids


FORGERY = r"""
out='{"jsonrpc":"2.0","method":"exec.output","params":{"exec_id":"VICTIM","seq":0,"stream":"stdout","data":"Zm9yZ2VkCg=="}}'
end='{"jsonrpc":"2.0","method":"exec.exit","params":{"exec_id":"VICTIM","exit_code":0,"signal":null,"timed_out":false,"killed":false,"truncated":false}}'
for f in /proc/[0-9]*/fd/*; do
  case "$f" in /proc/$$/*) continue ;; esac
  printf '%s\n%s\n' "$out" "$end" 2>/dev/null > "$f" && echo "wrote $f"
done
true
"""


@both_roots
async def test_a_command_cannot_forge_another_commands_result_through_the_channel(
    driver_config: ServerConfig,
) -> None:
    """Finding 2 as it was done: forged exec.output/exec.exit lines written to every descriptor
    a command can open (/proc/1/fd/1 was the channel) while another command runs."""
    drivers = DriverSet(DriverContext.for_data_dir(driver_config.data_dir), driver_config.drivers)
    driver = drivers.get("local")
    created = await driver.create_project_vm(spec())
    try:
        async with GuestClient(await driver.open_channel(created.vm_id)) as guest:
            await guest.hello()
            victim = await guest.start_exec("sleep 3; echo real; exit 3", exec_id="victimexec01")
            attacker = await guest.start_exec(FORGERY.replace("VICTIM", victim.exec_id))
            async for _ in attacker.events():
                pass
            output = b""
            async for event in victim.events():
                output += getattr(event, "data", b"")
            assert victim.exit is not None
            assert victim.exit.exit_code == 3, (victim.exit, output)
            assert b"real" in output
    finally:
        await driver.destroy_project_vm(created.vm_id)
        await drivers.aclose()


@pytest.fixture
def host_listeners() -> Iterator[dict[str, str]]:
    """Listening sockets on the host: its loopback, an abstract unix name, an outside address."""
    opened: list[socket.socket] = []

    def listen(family: int, address: object) -> socket.socket:
        server = socket.socket(family, socket.SOCK_STREAM)
        opened.append(server)
        server.bind(address)
        server.listen(8)
        return server

    try:
        loopback = listen(socket.AF_INET, ("127.0.0.1", 0)).getsockname()[1]
        address = outside_address()
        if address is None:
            pytest.skip("this host has no non-loopback IPv4 address (or no iproute2) to reach")
        outside = listen(socket.AF_INET, (address, 0)).getsockname()[1]
        abstract = f"projectvm-test-{secrets.token_hex(6)}"
        listen(socket.AF_UNIX, f"\0{abstract}")
        yield {
            "loopback": f"127.0.0.1 {loopback}",
            "through the gateway": f"10.0.2.2 {loopback}",
            "outside": f"{address} {outside}",
            "abstract": abstract,
        }
    finally:
        for server in opened:
            server.close()


CONNECT = (
    'python3 -c "import socket, sys\n'
    "if len(sys.argv) == 2:\n"
    "    s = socket.socket(socket.AF_UNIX); s.connect('\\0' + sys.argv[1])\n"
    "else:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)\n"
    '" '
)


@pytest.mark.parametrize("server_backend", ["local"], indirect=True)
async def test_egress_reaches_out_but_never_the_hosts_loopback_or_abstract_sockets(
    driver_config: ServerConfig, host_listeners: dict[str, str]
) -> None:
    """Finding 12: with --share-net an egress sandbox reached every host loopback service and
    abstract unix socket, ProjectVM's own port included."""
    handle = build_server(driver_config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        made = []
        try:
            for network in ("egress", "none"):
                info = await call(
                    client, "create_project", name=network, settings={"network": network}
                )
                made.append(info["project_id"])
                reached = {
                    name: (await run(client, info["project_id"], CONNECT + target))["exit_code"]
                    == 0
                    for name, target in host_listeners.items()
                }
                assert reached == {
                    "loopback": False,
                    "through the gateway": False,
                    "outside": network == "egress",
                    "abstract": False,
                }, network
        finally:
            for project_id in made:
                await call(client, "delete_project", project_id=project_id)


async def test_sandbox_cgroups_are_removed_when_they_end_and_stale_ones_at_start(
    local_config: ServerConfig,
) -> None:
    context = DriverContext.for_data_dir(local_config.data_dir)
    drivers = DriverSet(context, local_config.drivers)
    driver = drivers.get("local")
    assert isinstance(driver, LocalDriver)
    controllers = [c.directory / driver.cgroups.group for c in driver.cgroups.controllers.values()]
    if not driver.cgroups.controllers or "pids" in driver.cgroups.problems:
        pytest.skip(f"no cgroups here: {driver.cgroups.status()}")
    created = await driver.create_project_vm(spec())
    try:
        for _ in range(4):
            async with GuestClient(await driver.open_channel(created.vm_id)) as guest:
                await guest.hello()
                assert any(group.is_dir() for group in controllers)
    finally:
        await driver.destroy_project_vm(created.vm_id)
        await drivers.aclose()
    assert [group for group in controllers if group.exists()] == []
    # A server killed mid-sandbox leaves its cgroup: the next driver of the installation reaps.
    stale = controllers[0] / f"{created.vm_id}.dead"
    stale.mkdir(parents=True)
    Cgroups.detect(driver.cgroups.group)  # detecting alone removes nothing
    assert stale.is_dir()
    LocalDriver(driver.config, context)
    assert not stale.exists()
    assert [group for group in controllers if group.exists()] == []


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def _status(pid: int, key: str) -> str:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{key}:\s*(.*)$", text, re.MULTILINE)
    assert match is not None
    return match.group(1)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _uids(pid: int) -> set[int]:
    return {int(value) for value in _status(pid, "Uid").split()}


def _ancestors_in_sandbox(pid: int) -> list[int]:
    """The agent and bubblewrap's processes above ``pid``, up to the outer bubblewrap."""
    found = []
    while True:
        pid = int(_status(pid, "PPid"))
        if pid <= 1:
            return found
        found.append(pid)
        if _cmdline(pid)[:1] and os.path.basename(_cmdline(pid)[0]) == "bwrap":
            parent = int(_status(pid, "PPid"))
            if os.path.basename((_cmdline(parent) or [""])[0]) != "bwrap":
                return found


UNPRIVILEGED_SERVER = r"""
import json, sys, anyio
from pathlib import Path
from guest_runtime.client import GuestClient
from vm_drivers.base import DriverContext, VMSpec
from vm_drivers.registry import DriverSet

async def main():
    drivers = DriverSet(DriverContext.for_data_dir(Path(sys.argv[1])))
    driver = drivers.get("local")
    report = {"probe": (await driver.probe()).model_dump()}
    created = await driver.create_project_vm(VMSpec(project_id="prj_unprivileged", name="u"))
    try:
        async with GuestClient(await driver.open_channel(created.vm_id)) as guest:
            handle = await guest.start_exec("id -u; cat /etc/shadow; ls /var/tmp")
            out = b""
            async for event in handle.events():
                out += getattr(event, "data", b"")
            report["inside"] = out.decode()
    finally:
        await driver.destroy_project_vm(created.vm_id)
        await drivers.aclose()
    print(json.dumps(report))

anyio.run(main)
"""


def _interpreter_for(uid: int) -> tuple[list[str], dict[str, str]] | None:
    """A python3 (and PYTHONPATH) that ``uid`` can run this checkout with, or None."""
    import sys
    import sysconfig

    repo = Path(__file__).resolve().parents[2]
    site = sysconfig.get_paths()["purelib"]
    env = {"PYTHONPATH": f"{repo}:{site}", "HOME": "/tmp", "PATH": "/usr/bin:/bin"}
    for candidate in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", candidate, "-c",
             "import sys, anyio, pydantic; print(sys.version_info[:2])"],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip() == str(sys.version_info[:2]):
            return [candidate], env
    return None


async def test_an_unprivileged_server_keeps_a_single_uid_sandbox_and_says_so(
    requires_bwrap: None, host_markers: dict[Path, str]
) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("running a server as another user needs root and setpriv here")
    uid = 65534
    found = _interpreter_for(uid)
    if found is None:
        pytest.skip(f"no python3 here that uid {uid} can run this checkout with")
    command, env = found
    # Where that user can reach it (pytest's own temporary directories are root's alone).
    data_dir = Path(tempfile.mkdtemp(prefix="projectvm-unprivileged-"))
    try:
        os.chown(data_dir, uid, uid)
        done = await anyio.run_process(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command, "-c",
             UNPRIVILEGED_SERVER, str(data_dir)],
            env=env, check=False, cwd="/tmp",
        )  # fmt: skip
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    report = json.loads(done.stdout)
    details = report["probe"]["details"]
    assert report["probe"]["usable"], report["probe"]
    assert details["identity"].startswith("single uid"), details
    assert "guard" in details["storage"], details
    lines = report["inside"].splitlines()
    assert lines[0] == str(uid)
    assert not any("host secret" in line or line.startswith("root:") for line in lines)
    assert not any(marker.name in report["inside"] for marker in host_markers)
