"""Starts the guest agent inside a Lima instance; the lima driver runs it through ``limactl shell``.

The driver sends this file's source as ``python3 -c <source> <options JSON>``, so it is always the
host's current version and is never installed. It runs in the guest, so it is stdlib-only and
Python 3.8-compatible (annotations are never evaluated). In order, it:

1. puts a freshly copied agent in place (the driver copies to ``staged``; a rename makes it
   appear whole), or exits with ``AGENT_MISSING`` so the driver copies it;
2. ends the VM's previous agent (its pid is in ``pidfile``): one agent per VM, so commands started
   through an older channel die with it, even when that channel belonged to a crashed server;
3. prints ``marker``: the driver drops whatever came before it (a login shell's profile may print);
4. becomes the agent: directly, or inside a bubblewrap sandbox that shows only the project's
   directory as ``/workspace`` and, with ``network: none``, no network.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from typing import Any

AGENT_MISSING = 86
WORKSPACE_MISSING = 87
SANDBOX_MISSING = 88
BAD_OPTIONS = 89

SANDBOX_ROOT = "/workspace"
SANDBOX_AGENT = "/.projectvm/agent.pyz"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Top-level directories a sandbox never sees from the instance: per-boot, per-sandbox, or
# private to the instance's user (other projects' workspaces live in a home directory).
PRIVATE_TOP = ("proc", "dev", "sys", "tmp", "run", "workspace", "lost+found", ".projectvm")
HIDDEN_TOP = ("home", "root", "mnt", "media", "srv")
END_GRACE_S = 5.0


def fail(code: int, message: str) -> None:
    sys.stderr.write("projectvm launcher: " + message + "\n")
    sys.stderr.flush()
    sys.exit(code)


def expand(path: str) -> str:
    return os.path.expanduser(path)


def place_agent(agent: str, staged: str) -> None:
    if os.path.isfile(agent):
        return
    os.makedirs(os.path.dirname(agent), exist_ok=True)
    if os.path.isfile(staged):
        os.replace(staged, agent)
        return
    fail(AGENT_MISSING, "the guest agent is not at " + agent)


def is_agent(pid: int) -> bool:
    """Whether ``pid`` is still a running ProjectVM agent (pids get recycled)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read()
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return b"projectvm-agent" in cmdline and state != "Z"


def end_previous(pidfile: str) -> None:
    try:
        with open(pidfile) as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        return
    if pid == os.getpid() or not is_agent(pid):
        return
    # SIGTERM: the agent kills its commands and exits (a sandbox dies with its bwrap).
    for signum, grace in ((signal.SIGTERM, END_GRACE_S), (signal.SIGKILL, END_GRACE_S)):
        try:
            os.kill(pid, signum)
        except OSError:
            return
        deadline = time.monotonic() + grace
        while is_agent(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not is_agent(pid):
            return


def write_pidfile(pidfile: str) -> None:
    os.makedirs(os.path.dirname(pidfile), exist_ok=True)
    temporary = f"{pidfile}.{os.getpid()}"
    with open(temporary, "w") as handle:
        handle.write(f"{os.getpid()}\n")
    os.replace(temporary, pidfile)


def sandbox_argv(options: dict[str, Any], bwrap: str, agent: str, root: str) -> list[str]:
    argv = [bwrap, "--die-with-parent", "--new-session"]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if options.get("network") != "egress":
        argv.append("--unshare-net")
    if os.geteuid() == 0:
        argv += ["--cap-drop", "ALL"]
    for entry in sorted(os.listdir("/")):
        source = "/" + entry
        if entry in PRIVATE_TOP:
            continue
        if entry in HIDDEN_TOP:
            if os.path.isdir(source) and not os.path.islink(source):
                argv += ["--dir", source]
            continue
        if os.path.islink(source):
            argv += ["--symlink", os.readlink(source), source]
        else:
            argv += ["--ro-bind", source, source]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--ro-bind-try", "/sys", "/sys"]
    for path in options.get("hide", []):
        path = os.path.realpath(expand(path))
        top = path.strip("/").split("/", 1)[0]
        if top not in HIDDEN_TOP and top not in PRIVATE_TOP and os.path.isdir(path):
            argv += ["--tmpfs", path]
    argv += ["--bind", root, SANDBOX_ROOT, "--ro-bind", agent, SANDBOX_AGENT]
    argv += ["--chdir", SANDBOX_ROOT, "--clearenv"]
    for name, value in (
        ("PATH", SANDBOX_PATH),
        ("HOME", SANDBOX_ROOT),
        ("LANG", "C.UTF-8"),
        ("PROJECTVM_PROJECT_ID", str(options.get("project_id", ""))),
    ):
        argv += ["--setenv", name, value]
    argv += ["--", sys.executable, SANDBOX_AGENT, "--root", SANDBOX_ROOT]
    return argv


def agent_command(options: dict[str, Any], agent: str, root: str) -> list[str]:
    """The agent's argv, and the process environment it gets."""
    sandbox = options.get("sandbox", "none")
    bwrap = shutil.which("bwrap") if sandbox in ("bwrap", "auto") else None
    if sandbox == "bwrap" and bwrap is None:
        fail(SANDBOX_MISSING, "bubblewrap (bwrap) is not installed in this instance")
    if bwrap is not None:
        return sandbox_argv(options, bwrap, agent, root)
    os.chdir(root)
    os.environ["HOME"] = root
    os.environ["PROJECTVM_PROJECT_ID"] = str(options.get("project_id", ""))
    os.environ.setdefault("LANG", "C.UTF-8")
    return [sys.executable, agent, "--root", root]


def main(argv: list[str]) -> None:
    try:
        options = json.loads(argv[1])
        agent = expand(options["agent"])
        root = expand(options["root"])
        pidfile = expand(options["pidfile"])
        marker = str(options["marker"])
    except (IndexError, KeyError, TypeError, ValueError) as err:
        fail(BAD_OPTIONS, f"bad options ({err}); the driver and launcher disagree")
        return
    place_agent(agent, expand(options.get("staged") or agent + ".incoming"))
    if not os.path.isdir(root):
        fail(WORKSPACE_MISSING, f"the workspace {root} does not exist")
    end_previous(pidfile)
    command = agent_command(options, agent, root)
    write_pidfile(pidfile)
    sys.stdout.write(marker + "\n")
    sys.stdout.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
