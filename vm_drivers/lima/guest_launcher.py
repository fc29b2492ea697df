"""Starts the guest agent inside a Lima instance; the lima driver runs it through ``limactl shell``.

The driver sends this file's source as ``python3 -c <source> <options JSON>``, so it is always the
host's current version and is never installed. It runs in the guest, so it is stdlib-only and
Python 3.8-compatible (annotations are never evaluated). In order, it:

1. with a ``command_user`` in its options, becomes root: Lima's user has passwordless sudo, so
   the launcher runs itself again through ``sudo -n`` (or exits with ``NEEDS_ROOT`` saying why);
2. puts a freshly copied agent in place (the driver copies to ``staged``, in Lima's user's home;
   the agent's directory is root's), checking that its content matches the digest in its name,
   or exits with ``AGENT_MISSING`` so the driver copies it;
3. makes sure ``command_user`` exists (created when missing) and has no sudo: every command runs
   as that user (the agent's ``--run-as``), so commands cannot reach the agent's channel, its
   code or the firewall. Where the instance maps a single uid (fake-limactl without root) there
   is no other user to run them as: it says so on stderr and in its status line, and commands
   run as the agent's user;
4. ends the VM's previous agent (its pid is in ``pidfile``): one agent per VM, so commands started
   through an older channel die with it, even when that channel belonged to a crashed server;
5. prints a ``projectvm-commands:`` status line, then ``marker``: the driver drops whatever came
   before the marker (a login shell's profile may print) and keeps the status for doctor;
6. becomes the agent: directly, or inside a bubblewrap sandbox that shows only the project's
   directory as ``/workspace`` and, with ``network: none``, no network.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, NoReturn

AGENT_MISSING = 86
WORKSPACE_MISSING = 87
SANDBOX_MISSING = 88
BAD_OPTIONS = 89
NEEDS_ROOT = 90
COMMAND_USER_UNSAFE = 91

SANDBOX_ROOT = "/workspace"
SANDBOX_AGENT = "/.projectvm/agent.pyz"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Top-level directories a sandbox never sees from the instance: per-boot, per-sandbox, or
# private to the instance's user (other projects' workspaces live in a home directory).
PRIVATE_TOP = ("proc", "dev", "sys", "tmp", "run", "workspace", "lost+found", ".projectvm")
HIDDEN_TOP = ("home", "root", "mnt", "media", "srv")
END_GRACE_S = 5.0
STATUS_PREFIX = "projectvm-commands: "
AGENT_NAME = re.compile(r"projectvm-agent-([0-9a-f]{16})\.pyz$")
# Groups that give sudo (or root's files) on the distributions Lima ships images of.
PRIVILEGED_GROUPS = ("root", "sudo", "wheel", "admin")
# The command user logs in nowhere and has no home of its own (the agent gives it /workspace).
NO_LOGIN = ("--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin")
# What the agent keeps in a root sandbox to run commands as the command user (see the agent's
# identity module): switch to them, hand them the files the API writes, and signal them.
AGENT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_KILL",
    "CAP_SETUID",
    "CAP_SETGID",
)


def fail(code: int, message: str) -> NoReturn:
    sys.stderr.write("projectvm launcher: " + message + "\n")
    sys.stderr.flush()
    sys.exit(code)


def warn(message: str) -> None:
    sys.stderr.write("projectvm launcher: WARNING: " + message + "\n")
    sys.stderr.flush()


def expand(path: str) -> str:
    return os.path.expanduser(path)


def own_argv() -> list[str]:
    """How this launcher was started (``python3 -c SOURCE`` or ``python3 FILE``), options aside."""
    if sys.argv[0] != "-c":
        return [sys.executable, os.path.abspath(sys.argv[0])]
    with open("/proc/self/cmdline", "rb") as handle:
        parts = handle.read().split(b"\0")
    source = parts[parts.index(b"-c") + 1]
    return [sys.executable, "-c", source.decode()]


def become_root(options: dict[str, Any]) -> None:
    """Run again as root through ``sudo -n`` (Lima's user has passwordless sudo), or fail."""
    if os.geteuid() == 0:
        return
    if "caller_uid" in options:
        fail(NEEDS_ROOT, "sudo ran the launcher, but not as root; check the instance's sudoers")
    sudo = shutil.which("sudo")
    if sudo is None:
        fail(
            NEEDS_ROOT,
            "the agent must run as root to keep commands away from it, and this instance has no "
            "sudo; install sudo and give Lima's user passwordless sudo (Lima's default)",
        )
    probe = subprocess.run(
        [sudo, "-n", "true"], stdin=subprocess.DEVNULL, capture_output=True, check=False
    )
    if probe.returncode != 0:
        said = probe.stderr.decode(errors="replace").strip()
        fail(
            NEEDS_ROOT,
            "the agent must run as root to keep commands away from it, but `sudo -n true` "
            f"failed for {pwd_name(os.getuid())} ({said}); give Lima's user passwordless sudo "
            "again (Lima's default)",
        )
    options = dict(options, caller_uid=os.getuid())
    sys.stdout.flush()
    os.execv(sudo, [sudo, "-n", "--", *own_argv(), json.dumps(options, separators=(",", ":"))])


def pwd_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def matches_name(path: str) -> bool:
    """Whether an agent's content is what its name says (a name without a digest: trusted)."""
    named = AGENT_NAME.search(os.path.basename(path))
    return named is None or file_digest(path).startswith(named.group(1))


def secure_directory(path: str) -> None:
    """The agent's directory: root's and not writable by anyone else (when we are root)."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, 0, 0)
        os.chmod(path, 0o755)


def place_agent(agent: str, staged: str, caller_uid: int) -> None:
    directory = os.path.dirname(agent)
    secure_directory(directory)
    if os.path.isfile(agent) and not os.path.islink(agent):
        if matches_name(agent):
            if os.geteuid() == 0:
                os.chown(agent, 0, 0)
                os.chmod(agent, 0o644)
            return
        warn(f"{agent} does not match its digest (changed?); it is removed and copied again")
        os.unlink(agent)
    try:
        st = os.lstat(staged)
    except OSError:
        fail(AGENT_MISSING, "the guest agent is not at " + agent)
    # Only the driver's copy (Lima's user's, or root's) becomes the agent.
    if not os.path.isfile(staged) or os.path.islink(staged) or st.st_uid not in (0, caller_uid):
        os.unlink(staged)
        fail(AGENT_MISSING, f"{staged} is not the driver's copy of the agent; it was removed")
    temporary = f"{agent}.{os.getpid()}.tmp"
    shutil.copyfile(staged, temporary)
    os.chmod(temporary, 0o644)
    os.unlink(staged)
    if not matches_name(temporary):
        os.unlink(temporary)
        fail(AGENT_MISSING, "the copied agent does not match its digest; it was removed")
    os.replace(temporary, agent)


def mapped_uids() -> int:
    """How many uids this user namespace maps (a VM: all; an unprivileged sandbox: often one)."""
    try:
        with open("/proc/self/uid_map") as handle:
            return sum(int(line.split()[2]) for line in handle if len(line.split()) == 3)
    except (OSError, ValueError):
        return 1 << 32


def ensure_user(name: str) -> pwd.struct_passwd:
    """The command user: made when missing, refused when it could become root."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            fail(
                COMMAND_USER_UNSAFE,
                f"cannot create the command user {name}: this instance has no useradd; create an "
                f"unprivileged user {name} without sudo yourself",
            )
        made = subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        if made.returncode != 0:
            said = made.stderr.decode(errors="replace").strip()
            fail(COMMAND_USER_UNSAFE, f"useradd {name} failed: {said}")
        entry = pwd.getpwnam(name)
    groups = {g.gr_name for g in grp.getgrall() if name in g.gr_mem}
    try:
        groups.add(grp.getgrgid(entry.pw_gid).gr_name)
    except KeyError:
        pass
    risky = sorted(groups & set(PRIVILEGED_GROUPS))
    if entry.pw_uid == 0 or entry.pw_gid == 0 or risky:
        fail(
            COMMAND_USER_UNSAFE,
            f"the command user {name} is privileged (uid {entry.pw_uid}, groups "
            f"{', '.join(risky) or '-'}); commands must not be; remove it (userdel {name}) so "
            "the launcher makes an unprivileged one",
        )
    if sudo_allows(name):
        fail(
            COMMAND_USER_UNSAFE,
            f"the command user {name} may use sudo here; remove its sudoers entry or the user "
            f"(userdel {name}) so commands cannot become root",
        )
    return entry


def sudo_allows(name: str) -> bool:
    sudo = shutil.which("sudo")
    if sudo is None:
        return False
    listed = subprocess.run(
        [sudo, "-n", "-l", "-U", name],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        env={"PATH": SANDBOX_PATH, "LC_ALL": "C"},
    )
    return b"not allowed to run sudo" not in listed.stdout + listed.stderr


def command_identity(options: dict[str, Any]) -> tuple[str | None, str]:
    """``UID:GID`` for the agent's --run-as (None: commands run as the agent), and a status."""
    name = options.get("command_user")
    if not name:
        return None, "shared: commands run as the agent's user (no command_user asked for)"
    if os.geteuid() != 0:
        return None, "shared: commands run as the agent's user (the launcher is not root)"
    if mapped_uids() <= 1:
        why = (
            "this instance maps a single uid (/proc/self/uid_map), so there is no user to run "
            "commands as but the agent's: commands are NOT separated from the agent and could "
            "reach its channel and code; run the VM where it has real users (fake-limactl: as root)"
        )
        warn(why)
        return None, "shared: " + why
    entry = ensure_user(str(name))
    status = f"separate: commands run as {name} (uid {entry.pw_uid}, no sudo), the agent as root"
    return f"{entry.pw_uid}:{entry.pw_gid}", status


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


def sandbox_argv(
    options: dict[str, Any], bwrap: str, agent: str, root: str, run_as: str | None
) -> list[str]:
    argv = [bwrap, "--die-with-parent", "--new-session"]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if options.get("network") != "egress":
        argv.append("--unshare-net")
    if os.geteuid() == 0:
        argv += ["--cap-drop", "ALL"]
        if run_as is not None:
            for capability in AGENT_CAPABILITIES:
                argv += ["--cap-add", capability]
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
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    argv += ["--ro-bind-try", "/sys", "/sys"]
    for path in options.get("hide", []):
        path = os.path.realpath(expand(path))
        top = path.strip("/").split("/", 1)[0]
        if top not in HIDDEN_TOP and top not in PRIVATE_TOP and os.path.isdir(path):
            argv += ["--tmpfs", path]
    # The agent's directory: readable by commands (its code is no secret), writable by none.
    argv += ["--perms", "0755", "--dir", os.path.dirname(SANDBOX_AGENT)]
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
    return argv + (["--run-as", run_as] if run_as is not None else [])


def agent_command(options: dict[str, Any], agent: str, root: str, run_as: str | None) -> list[str]:
    """The agent's argv (its process environment is set here too)."""
    sandbox = options.get("sandbox", "none")
    bwrap = shutil.which("bwrap") if sandbox in ("bwrap", "auto") else None
    if sandbox == "bwrap" and bwrap is None:
        fail(SANDBOX_MISSING, "bubblewrap (bwrap) is not installed in this instance")
    if bwrap is not None:
        return sandbox_argv(options, bwrap, agent, root, run_as)
    os.chdir(root)
    os.environ["HOME"] = root
    os.environ["PROJECTVM_PROJECT_ID"] = str(options.get("project_id", ""))
    os.environ.setdefault("LANG", "C.UTF-8")
    os.environ.setdefault("PATH", SANDBOX_PATH)
    command = [sys.executable, agent, "--root", root]
    return command + (["--run-as", run_as] if run_as is not None else [])


def read_options(argv: list[str]) -> dict[str, Any]:
    """The driver's options, with ``~`` already expanded for Lima's user (before any sudo)."""
    try:
        options = json.loads(argv[1])
        for key in ("agent", "root", "pidfile"):
            options[key] = expand(options[key])
        options["staged"] = expand(options.get("staged") or options["agent"] + ".incoming")
        options["hide"] = [expand(path) for path in options.get("hide", [])]
        str(options["marker"])
    except (IndexError, KeyError, TypeError, ValueError, AttributeError) as err:
        fail(BAD_OPTIONS, f"bad options ({err}); the driver and launcher disagree")
    return dict(options)


def main(argv: list[str]) -> None:
    options = read_options(argv)
    if options.get("command_user"):
        become_root(options)
    agent, root, pidfile = options["agent"], options["root"], options["pidfile"]
    place_agent(agent, options["staged"], int(options.get("caller_uid", os.getuid())))
    if not os.path.isdir(root):
        fail(WORKSPACE_MISSING, f"the workspace {root} does not exist")
    run_as, status = command_identity(options)
    end_previous(pidfile)
    command = agent_command(options, agent, root, run_as)
    write_pidfile(pidfile)
    sys.stdout.write(STATUS_PREFIX + status + "\n")
    sys.stdout.write(str(options["marker"]) + "\n")
    sys.stdout.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
