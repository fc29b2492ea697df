"""A fake Fly Machine's "VM": its ``init.exec`` run in a bubblewrap sandbox on this host.

The sandbox sees the host's root read-only (as an image would be), a private /tmp, /proc and
PID namespace, the Machine's ``config.files`` written where they ask, its volume directory
bound at the mount path, and exactly the environment Fly gives: ``config.env``, the app's
secrets and ``FLY_*`` variables. It shares the host's network: instead of a private address,
each service's ``internal_port`` is mapped to a free loopback port by rewriting the listen
address (``0.0.0.0:PORT``, ``[::]:PORT`` or ``:PORT``) in the command line, and the fake proxy
routes there. Suspend freezes every process of the sandbox (SIGSTOP), so memory is kept;
resume thaws them (SIGCONT).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

__all__ = ["FakeLaunchError", "MachineSandbox", "processes_under"]

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NEVER_BOUND = {"proc", "dev", "sys", "tmp", "lost+found"}
_LISTEN = re.compile(r"^(0\.0\.0\.0|\[::\]|::|)?:(\d+)$")


class FakeLaunchError(Exception):
    """The fake cannot boot this Machine; the message says why (it becomes a launch event)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _descendants(pid: int) -> list[int]:
    """``pid`` and everything under it, parents before children."""
    tree = _children()
    order, stack = [], [pid]
    while stack:
        current = stack.pop(0)
        order.append(current)
        stack.extend(tree.get(current, []))
    return order


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a process from a later one with its pid)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _read_info(fd: int) -> dict[str, Any]:
    """bubblewrap's --info-fd report (written once the sandbox is set up, then closed)."""
    data = b""
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
    try:
        info = json.loads(data or b"{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


class MachineSandbox:
    def __init__(
        self, process: Process, ports: dict[int, int], log_path: Path, child_pid: int | None
    ) -> None:
        self.process = process
        self.ports = ports  # internal_port -> loopback port
        self.log_path = log_path
        self.frozen = False
        # The sandbox's PID 1 (bubblewrap's child): killed with the rest even if bubblewrap's
        # outer process is already gone.
        self.child_pid = child_pid
        self._child_started = _start_time(child_pid) if child_pid else None

    @classmethod
    async def launch(
        cls,
        *,
        bwrap: str,
        machine_dir: Path,
        config: Mapping[str, Any],
        environment: Mapping[str, str],
        mounts: Mapping[str, Path],
    ) -> MachineSandbox:
        argv = list((config.get("init") or {}).get("exec") or [])
        if not argv:
            raise FakeLaunchError(
                "the fake runs init.exec only (it has no registry to read the image's CMD)"
            )
        ports: dict[int, int] = {}
        for service in config.get("services") or []:
            internal = int(service["internal_port"])
            ports[internal] = _free_port()
            rewritten = False
            for index, argument in enumerate(argv):
                found = _LISTEN.match(argument)
                if found and int(found.group(2)) == internal:
                    argv[index] = f"127.0.0.1:{ports[internal]}"
                    rewritten = True
            if not rewritten:
                raise FakeLaunchError(
                    f"the fake cannot map internal_port {internal}: no 0.0.0.0:{internal} "
                    "in init.exec"
                )
        files_root = machine_dir / "rootfs"
        taken = set(NEVER_BOUND)
        for path in mounts:
            taken.add(path.strip("/").split("/", 1)[0])
        file_tops: set[str] = set()
        for item in config.get("files") or []:
            guest_path = str(item["guest_path"])
            top = guest_path.strip("/").split("/", 1)[0]
            if os.path.lexists(f"/{top}"):
                raise FakeLaunchError(
                    f"the fake writes files only under a new top-level directory, not {guest_path}"
                )
            target = files_root / guest_path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(base64.b64decode(item.get("raw_value", "")))
            target.chmod(0o755)
            file_tops.add(top)
        taken |= file_tops
        info_read, info_write = os.pipe()
        command = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        command += ["--info-fd", str(info_write)]
        for entry in sorted(os.listdir("/")):
            if entry in taken:
                continue
            source = f"/{entry}"
            if os.path.islink(source):
                command += ["--symlink", os.readlink(source), source]
            else:
                command += ["--ro-bind", source, source]
        command += [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--ro-bind-try",
            "/sys",
            "/sys",
        ]
        for top in sorted(file_tops):
            command += ["--ro-bind", str(files_root / top), f"/{top}"]
        for path, directory in mounts.items():
            command += ["--bind", str(directory), path]
        command += ["--hostname", str(environment.get("FLY_MACHINE_ID", "fake")), "--chdir", "/"]
        command += ["--clearenv", "--setenv", "PATH", SANDBOX_PATH]
        for name, value in environment.items():
            command += ["--setenv", name, value]
        command += ["--", *argv]
        log_path = machine_dir / "console.log"
        try:
            with log_path.open("ab") as log:
                process = await anyio.open_process(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(info_write,),
                )
        finally:
            os.close(info_write)
        info = await anyio.to_thread.run_sync(_read_info, info_read)
        child = info.get("child-pid")
        return cls(process, ports, log_path, child if isinstance(child, int) else None)

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def freeze(self) -> None:
        """SIGSTOP every process of the Machine (twice: catch what forked meanwhile)."""
        for _ in range(2):
            _signal_all(self._all_pids(), signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        _signal_all(list(reversed(self._all_pids())), signal.SIGCONT)
        self.frozen = False

    async def stop(self, signum: int, timeout_s: float) -> None:
        """Send ``signum`` to the Machine's processes (bubblewrap's own aside), then force."""
        if self.frozen:
            self.thaw()
        if self.running:
            pids = [pid for pid in self._all_pids() if _command_name(pid) != "bwrap"]
            _signal_all(pids, signum)
            with anyio.move_on_after(timeout_s):
                await self.process.wait()
        await self.kill()

    def _all_pids(self) -> list[int]:
        pids = _descendants(self.process.pid) if self.running else []
        if self.child_pid and _start_time(self.child_pid) == self._child_started:
            pids += [pid for pid in _descendants(self.child_pid) if pid not in pids]
        return pids

    async def kill(self) -> None:
        _signal_all(self._all_pids(), signal.SIGKILL)
        with anyio.CancelScope(shield=True):
            await self.process.wait()
            await self.process.aclose()

    def console_tail(self, size: int = 1500) -> str:
        try:
            data = self.log_path.read_bytes()[-size:]
        except OSError:
            return ""
        return data.decode(errors="replace").strip()


def processes_under(root: Path) -> list[int]:
    """Processes whose command line names a path under ``root`` (a fake's leftovers)."""
    marker = str(root).encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if marker in handle.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""
