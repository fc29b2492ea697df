"""Starting a sandbox: the command line, and the handshake that finishes it before the agent runs.

bubblewrap is started waiting (``--userns-block-fd`` or ``--block-fd``) and reports its sandbox's
pid (``--info-fd``); the server then writes the user namespace's id maps (as root), gives an
egress sandbox its network, and only then lets it go on to run the guest agent. So the agent and
every command start with their final identity and network.

As root, bubblewrap itself runs as the sandbox range's first uid, in a private mount namespace
prepared by a small root shell: the "stage", a tmpfs at a directory anyone may traverse, where
the workspace, the agent, the sandbox's /etc files and the image tree are bind-mounted, because
an unprivileged uid may not be able to reach them where they live (the data directory is usually
private); the workspace is given to the sandbox's uid if it is not yet. The namespace's copies
of other workspaces' disk mounts are dropped, so a running sandbox never keeps another
project's deleted disk alive. The stage's mounts vanish with the sandbox.

The channel to the agent is a socket the agent gets on a descriptor of its own, never the stdio
of bubblewrap's init (pid 1 of the sandbox), which commands could otherwise open through
``/proc/1/fd``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
from anyio.streams.stapled import StapledByteStream

from vm_drivers.errors import DriverUnavailable, VMOperationFailed
from vm_drivers.sandbox.identity import SandboxIdentity
from vm_drivers.sandbox.network import UserModeNetwork, read_until_eof
from vm_drivers.sandbox.root import AGENT_PATH, WORKSPACE, SandboxRoot

__all__ = ["Sandbox", "SandboxPlan", "check_stage", "start_sandbox"]

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SETUP_TIMEOUT_S = 60.0
# Refuses a workspace DISK directory that has nothing mounted on it (writes would go to the
# host's disk, unbounded); mounts the stage (a tmpfs) and binds each SOURCE NAME pair into it;
# then, for each DIRECTORY after "--", drops this namespace's copies of the mounts under it;
# gives the workspace to OWNER if it is someone else's; then runs the rest, after a second "--".
STAGE_SCRIPT = """set -e
stage=$1; owner=$2; disk=$3; shift 3
if [ -n "$disk" ] && [ "$(stat -c %d "$disk")" = "$(stat -c %d "$disk/..")" ]; then
  echo "projectvm: the workspace disk is not mounted at $disk" >&2
  exit 1
fi
mount -t tmpfs -o mode=0711,size=1m projectvm-stage "$stage"
while [ "$1" != "--" ]; do
  if [ -d "$1" ]; then mkdir "$stage/$2"; else : > "$stage/$2"; fi
  mount --bind "$1" "$stage/$2"
  shift 2
done
shift
while [ "$1" != "--" ]; do
  while read -r _ _ _ _ point _; do
    case "$point" in "$1"/*) umount --lazy "$point" 2>/dev/null || true ;; esac
  done < /proc/self/mountinfo
  shift
done
shift
if [ "$(stat -c %u:%g "$stage/workspace")" != "$owner" ]; then
  chown -R -h "$owner" "$stage/workspace"
fi
exec "$@"
"""
# Inside the sandbox: the channel's two sockets become the agent's stdin and stdout and the log
# its stderr, then the agent runs as `python3 /.projectvm/agent.pyz ...`. (A shell cannot do the
# first part: dash only knows fds 0-9.) One socket per direction: asyncio takes a readable
# "pipe" it writes to for a hang-up.
CHANNEL_SHIM = (
    "import os, sys\n"
    "for target, fd in zip((0, 1, 2), map(int, sys.argv[1:4])):\n"
    "    os.dup2(fd, target); os.close(fd)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[4:]])\n"
)


@dataclass
class SandboxPlan:
    """Everything one sandbox is made of."""

    bwrap: str
    identity: SandboxIdentity
    root: SandboxRoot
    python: str
    hostname: str
    egress: bool
    staged: dict[str, Path]  # "workspace", "agent.pyz", "etc", "rootfs" -> host path
    etc_names: list[str]
    foreign_mounts: list[Path] = field(default_factory=list)  # directories of others' disks
    workspace_disk: bool = False  # the staged workspace must be a mount point
    environment: dict[str, str] = field(default_factory=dict)
    stage: Path | None = None  # as root: where the stage tmpfs is mounted
    program: list[str] | None = None  # instead of the agent (a trial run)

    def _reach(self, name: str) -> str:
        if self.stage is not None:
            return str(self.stage / name)
        return str(self.staged[name])

    def command(self, info_fd: int, block_fd: int, agent_fds: tuple[int, int, int]) -> list[str]:
        """``agent_fds``: the agent's stdin, stdout and stderr, passed on descriptors of their
        own (bubblewrap's init closes them; its own stdio is a pipe only setup errors use)."""
        """The whole command line (before any cgroup wrapper)."""
        wait = "--userns-block-fd" if self.identity.privileged else "--block-fd"
        bwrap = [self.bwrap, "--unshare-user", wait, str(block_fd), "--info-fd", str(info_fd)]
        bwrap += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if not self.egress:
            bwrap.append("--unshare-net")  # lo only; egress gets the launcher's namespace
        bwrap += ["--die-with-parent", "--new-session"]
        bwrap += self.root.bwrap_args(self._reach, self.etc_names)
        bwrap += ["--hostname", self.hostname, "--chdir", WORKSPACE, "--clearenv"]
        environment = {"PATH": SANDBOX_PATH, "HOME": WORKSPACE, "LANG": "C.UTF-8"}
        for key, value in {**environment, **self.environment}.items():
            bwrap += ["--setenv", key, value]
        bwrap += self.identity.capability_args()
        if self.program is not None:
            bwrap += ["--", *self.program]
        else:
            fds = [str(fd) for fd in agent_fds]
            bwrap += ["--", self.python, "-I", "-S", "-c", CHANNEL_SHIM, *fds, AGENT_PATH]
            bwrap += ["--root", WORKSPACE, *self.identity.agent_args()]
        if not self.identity.privileged:
            if self.egress:
                # A network namespace of our own, owned by a user namespace of our own.
                launcher = ["unshare", "--user", "--map-current-user", "--net", "--"]
                return launcher + bwrap
            return bwrap
        assert self.stage is not None
        launcher = ["unshare", "--mount", "--propagation", "private"]
        if self.egress:
            launcher.append("--net")
        owner = "{}:{}".format(*self.identity.workspace_owner())
        disk = str(self.staged["workspace"]) if self.workspace_disk else ""
        launcher += ["--", "/bin/sh", "-c", STAGE_SCRIPT, "projectvm-stage", str(self.stage)]
        launcher += [owner, disk]
        for name, source in self.staged.items():
            launcher += [str(source), name]
        launcher += ["--", *(str(directory) for directory in self.foreign_mounts)]
        return [*launcher, "--", *self.identity.drop_to(), *bwrap]


@dataclass
class Sandbox:
    """A started sandbox: bubblewrap's process, the agent's channel, and its network."""

    process: anyio.abc.Process
    channel: anyio.abc.ByteStream
    network: UserModeNetwork | None
    init_pid: int  # the sandbox's pid 1 (bubblewrap's init), as the host sees it

    async def aclose_network(self) -> None:
        if self.network is not None:
            await self.network.aclose()


def check_stage(runtime_dir: Path, identity: SandboxIdentity) -> Path:
    """Make the stage's mount point in ``runtime_dir`` (both traversable by anyone, listable by
    root only) and return it; refuse if the sandbox's uid could not reach it."""
    stage = runtime_dir / "stage"
    stage.mkdir(parents=True, exist_ok=True)
    for directory in (runtime_dir, stage):
        directory.chmod(0o711)
    for directory in runtime_dir.parents:
        if not directory.stat().st_mode & 0o001:
            raise DriverUnavailable(
                "local",
                f"the sandbox's uid {identity.uid_base} cannot traverse {directory} to reach "
                f"the staging directory {stage}",
                "set the local driver's runtime_dir to a directory whose parents anyone may "
                "traverse (the default is /run/projectvm-local)",
            )
    return stage


async def start_sandbox(
    plan: SandboxPlan,
    wrap: Callable[[list[str]], list[str]],
    log_path: Path,
    slirp4netns: str | None,
) -> Sandbox:
    """Start the sandbox of ``plan`` (its command wrapped by ``wrap``, e.g. to join cgroups)
    and finish it: ids mapped, network up, agent running. Raises with the log's tail if
    bubblewrap fails."""
    info_read, info_write = os.pipe()
    block_read, block_write = os.pipe()
    # What bubblewrap and the launcher say (errors) goes to a pipe read only if setup fails: a
    # command that opens /proc/1/fd/2 of the sandbox can fill 64 KiB of it, not the host's disk.
    setup_read, setup_write = os.pipe()
    to_agent, agent_in = socket.socketpair()
    from_agent, agent_out = socket.socketpair()
    log = log_path.open("ab")
    agent_fds = (agent_in.fileno(), agent_out.fileno(), log.fileno())
    argv = wrap(plan.command(info_write, block_read, agent_fds))
    try:
        process = await anyio.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=setup_write,
            stderr=setup_write,
            pass_fds=(info_write, block_read, *agent_fds),
            env={"PATH": HOST_PATH, "LANG": "C.UTF-8"},
        )
    except OSError as err:
        for fd in (info_read, info_write, block_read, block_write, setup_read, setup_write):
            os.close(fd)
        for end in (to_agent, agent_in, from_agent, agent_out, log):
            end.close()
        raise DriverUnavailable(
            "local", f"could not start bubblewrap: {err}", "install bubblewrap and util-linux"
        ) from err
    for fd in (info_write, block_read, setup_write):
        os.close(fd)
    for end in (agent_in, agent_out, log):
        end.close()
    network = None
    try:
        info = await read_until_eof(info_read, timeout_s=SETUP_TIMEOUT_S)
        if not info:
            with anyio.move_on_after(SETUP_TIMEOUT_S):
                await process.wait()
            said = _available(setup_read).decode(errors="replace").strip()
            with log_path.open("a") as log_file:
                log_file.write(said + "\n")
            raise VMOperationFailed(
                f"the sandbox could not be set up: {said[-1500:] or 'no message'}; see {log_path}"
            )
        child = int(json.loads(info)["child-pid"])
        if plan.identity.privileged:
            plan.identity.write_maps(child)
        if plan.egress:
            if slirp4netns is None:
                raise DriverUnavailable("local", "no slirp4netns for an egress project")
            userns = None if plan.identity.privileged else f"/proc/{process.pid}/ns/user"
            network = await UserModeNetwork.start(
                slirp4netns, f"/proc/{process.pid}/ns/net", userns, log_path
            )
        os.write(block_write, b"1")
    except BaseException:
        with anyio.CancelScope(shield=True):
            to_agent.close()
            from_agent.close()
            if network is not None:
                await network.aclose()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.wait()
        raise
    finally:
        for fd in (info_read, block_write, setup_read):
            os.close(fd)
    for end in (to_agent, from_agent):
        end.setblocking(False)
    channel = StapledByteStream(
        await anyio.abc.SocketStream.from_socket(to_agent),
        await anyio.abc.SocketStream.from_socket(from_agent),
    )
    return Sandbox(process, channel, network, child)


def _available(fd: int, limit: int = 65536) -> bytes:
    """What is in the pipe ``fd`` now (its writers are gone or idle), without waiting."""
    os.set_blocking(fd, False)
    data = b""
    while len(data) < limit:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data
