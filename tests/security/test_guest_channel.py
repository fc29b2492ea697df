"""Commands cannot reach the guest agent: not its channel to the host, not its code.

Issue 9, findings 2 (forging another agent's results) and 3 (replacing the agent), on every
driver that isolates commands at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from mcp import Client

from guest_runtime.bundle import agent_zipapp
from server.domain.config import ServerConfig
from server.store import Store
from tests.conftest import requires_isolation
from tests.helpers import call, issue_token
from tests.servers import http_client, http_server

pytestmark = pytest.mark.anyio

# Both attacks below first make sure they run where the test means them to: in a sandbox or VM
# that cannot see this host's processes (the test runner is one). Where a command can see the
# host (a backend without isolation), they touch nothing and say so.
GUARD = r"""
import os, sys
runner = ("py" + "test").encode()  # spelt apart: this very command line must not match
def sees_the_host():
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if runner in open("/proc/%s/cmdline" % pid, "rb").read():
                    return True
            except OSError:
                pass
    return False
if sees_the_host():
    print("NOT ISOLATED: this command sees the host processes; it touched nothing")
    sys.exit(0)
"""

# The original forgery, thoroughly: output and an exit for the victim's execution, written to
# every pipe and character device (what a channel is) that any process the command can see
# has open. Regular files are left alone: no channel is one.
FORGE = (
    GUARD
    + r"""
import base64, glob, json, stat
victim = sys.argv[1]
passed = base64.b64encode(b"all tests passed\n").decode()
forged = [
    {"jsonrpc": "2.0", "method": "exec.output",
     "params": {"exec_id": victim, "seq": seq, "stream": "stdout", "data": passed}}
    for seq in range(8)
] + [
    {"jsonrpc": "2.0", "method": "exec.exit",
     "params": {"exec_id": victim, "exit_code": 0, "signal": None, "timed_out": False,
                "killed": False, "truncated": False, "stdout_bytes": 17, "stderr_bytes": 0,
                "duration_ms": 1}}
]
payload = ("\n" + "\n".join(json.dumps(m) for m in forged) + "\n").encode()
reached = []
for path in glob.glob("/proc/[0-9]*/fd/*"):
    try:
        mode = os.stat(path).st_mode
    except OSError:
        continue
    if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
        continue
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        continue
    try:
        os.write(fd, payload)
        reached.append(path)
    except OSError:
        pass
    finally:
        os.close(fd)
print("reached", len(reached), " ".join(reached))
"""
)

# Finds the agent's code (every .pyz a python process runs), then tries to change it in each
# way a command could: write, truncate, chmod, replace by rename, remove, add to its directory.
TAMPER = (
    GUARD
    + r"""
import hashlib, json
found = set()
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        argv = open("/proc/%s/cmdline" % pid, "rb").read().decode().split("\0")
    except OSError:
        continue
    found.update(arg for arg in argv[1:3] if arg.endswith(".pyz") and os.path.isfile(arg))
def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()
before = {path: digest(path) for path in found}
done = []
def attempt(what, action):
    try:
        action()
        done.append(what)
    except OSError:
        pass
for path in sorted(found):
    directory = os.path.dirname(path)
    if os.access(path, os.W_OK):
        done.append("[ -w %s ]" % path)
    if os.access(directory, os.W_OK):
        done.append("[ -w %s ]" % directory)
    attempt("write " + path, lambda: open(path, "r+b").write(b"#"))
    attempt("truncate " + path, lambda: os.truncate(path, 0))
    attempt("chmod " + path, lambda: os.chmod(path, 0o777))
    attempt("touch %s/probe" % directory, lambda: open(os.path.join(directory, "probe"), "w"))
    def swap():
        with open("/tmp/evil.pyz", "w") as evil:
            evil.write("evil")
        os.rename("/tmp/evil.pyz", path)
    attempt("replace " + path, swap)
    attempt("remove " + path, lambda: os.unlink(path))
after = {path: digest(path) if os.path.isfile(path) else None for path in found}
print(json.dumps({"before": before, "after": after, "done": done}))
"""
)


async def run_attack(client: Client, project_id: str, script: str, *args: str) -> str:
    """Run an attack script in the project; fail (touching nothing) where it sees the host."""
    command = " ".join([f"python3 -c '{script}'", *args])
    with anyio.fail_after(60):
        result = await call(client, "run_command", project_id=project_id, command=command)
    if result["stdout"].startswith("NOT ISOLATED"):
        pytest.fail(f"commands on this backend see the host's processes: {result['stdout']}")
    return str(result["stdout"])


@pytest.fixture
async def agents(driver_config: ServerConfig) -> AsyncIterator[tuple[Client, Client]]:
    """alice and bob, each with a token, over HTTP to one server on the driver under test."""
    requires_isolation(driver_config)
    driver_config.data_dir.mkdir(parents=True, exist_ok=True)
    async with await Store.open(driver_config.db_path) as store:
        tokens = {name: await issue_token(store, name) for name in ("alice", "bob")}
    async with (
        http_server(driver_config) as url,
        http_client(url, tokens["alice"]) as alice,
        http_client(url, tokens["bob"]) as bob,
    ):
        yield alice, bob


async def finished(client: Client, execution_id: str) -> dict[str, Any]:
    with anyio.fail_after(120):
        while True:
            output = await call(client, "read_command_output", execution_id=execution_id, wait_s=10)
            if output["finished"]:
                return output


async def test_a_command_cannot_forge_another_agents_results(
    agents: tuple[Client, Client],
) -> None:
    alice, bob = agents
    project_id = (await call(alice, "create_project", name="forgery"))["project_id"]
    try:
        await call(
            alice, "assign_agent", project_id=project_id, agent_id="bob", access_level="read_write"
        )
        # bob's test run fails (exit 3); it waits for its input to end, so it is running while
        # alice's command tries to forge its result.
        victim = await call(
            bob,
            "run_command",
            project_id=project_id,
            command="echo real-output; cat > /dev/null; exit 3",
            keep_stdin_open=True,
            wait_s=0,
        )
        victim_id = victim["execution_id"]
        forgery = await run_attack(alice, project_id, FORGE, victim_id)
        assert forgery.splitlines()[-1].startswith("reached "), forgery
        await call(bob, "send_input", execution_id=victim_id, data="", eof=True)
        await finished(bob, victim_id)
        history = await call(
            alice, "get_execution_history", project_id=project_id, include_output=True
        )
        [record] = [e for e in history["executions"] if e["execution_id"] == victim_id]
        assert (record["status"], record["exit_code"]) == ("completed", 3), (record, forgery)
        assert record["agent_id"] == "bob"
        assert record["output"].startswith("real-output\n")
        assert "all tests passed" not in record["output"], (record["output"], forgery)
    finally:
        await call(alice, "delete_project", project_id=project_id)


async def test_a_command_cannot_change_the_guest_agents_code(
    agents: tuple[Client, Client],
) -> None:
    alice, _ = agents
    expected = hashlib.sha256(agent_zipapp()).hexdigest()
    project_id = (await call(alice, "create_project", name="tamper"))["project_id"]
    try:
        report = json.loads(await run_attack(alice, project_id, TAMPER))
        assert report["before"], f"no agent code found from inside the VM: {report}"
        assert set(report["before"].values()) == {expected}
        assert report["done"] == [], f"a command could {', '.join(report['done'])}"
        assert report["after"] == report["before"]
        # And the agent still answers, unchanged.
        again = await call(alice, "run_command", project_id=project_id, command="echo alive")
        assert again["stdout"] == "alive\n"
    finally:
        await call(alice, "delete_project", project_id=project_id)
