"""The Firecracker process: its runtime directory, sockets, console log and pidfile.

- Every VM gets a short runtime directory (unix socket paths hold at most 107 bytes), where
  Firecracker's API socket and vsock socket live. Stale sockets are unlinked before a spawn and
  after an exit: Firecracker refuses to bind a path that exists.
- stdin is ``/dev/null`` (Firecracker would put a terminal into raw mode); stdout (the guest's
  serial console) and stderr go through a pipe that a thread drains into a size-capped,
  rotated log, so the VMM never blocks on a full pipe and a chatty guest cannot fill the disk.
- A pidfile (pid, kernel start time, labels) lets a restarted server find, adopt or kill the
  VMMs of an earlier run; the start time guards against a recycled pid. Signals go through a
  pidfd, never to a bare pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio
from anyio.abc import Process
from pydantic import BaseModel, ValidationError

from vm_drivers.errors import DriverConfigError, VMOperationFailed

__all__ = [
    "SUN_PATH_MAX",
    "ConsoleLog",
    "RuntimePaths",
    "VMMPidfile",
    "VMMProcess",
    "adopt",
    "spawn",
    "wait_for_api_socket",
]

# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
SUN_PATH_MAX = 107
API_SOCKET_POLL_S = 0.01
KILL_WAIT_S = 5.0
# Firecracker's own log lines ("2026-11-29T19:27:59.907737846 [id:thread] ...") on its stdout.
_VMM_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+ \[")


@dataclass(frozen=True)
class RuntimePaths:
    """Where one VM's sockets and VMM files live on the host.

    With the jailer, ``root`` is the chroot and Firecracker sees every path relative to it
    (:meth:`api_view`); the API socket then sits where the jailer's Firecracker puts it.
    """

    root: Path
    chroot: bool = False

    @property
    def api_socket(self) -> Path:
        return self.root / ("run/firecracker.socket" if self.chroot else "api.sock")

    @property
    def vsock_socket(self) -> Path:
        return self.root / "v.sock"

    @property
    def vmm_log(self) -> Path:
        return self.root / "firecracker.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def pidfile(self) -> Path:
        return self.root / "vmm.json"

    def api_view(self, path: Path) -> str:
        """``path`` as Firecracker names it (inside the chroot when jailed)."""
        if not self.chroot:
            return str(path)
        return "/" + str(path.relative_to(self.root))

    def sockets(self, ports: Iterable[int] = ()) -> list[Path]:
        """The API socket, the vsock socket and its per-port listeners ``v.sock_<port>``."""
        return [
            self.api_socket,
            self.vsock_socket,
            *(self.root / f"{self.vsock_socket.name}_{port}" for port in ports),
        ]

    def check_lengths(self, ports: Iterable[int]) -> None:
        for path in self.sockets(ports):
            if len(os.fsencode(path)) > SUN_PATH_MAX:
                raise DriverConfigError(
                    f"the socket path {path} is {len(os.fsencode(path))} bytes, over the "
                    f"{SUN_PATH_MAX}-byte limit of unix sockets; set the firecracker driver's "
                    "runtime_dir (or the jailer's chroot_base_dir) to a shorter directory"
                )

    def remove_stale_sockets(self) -> None:
        """Unlink the sockets a killed VMM left: Firecracker cannot bind over them."""
        stale = set(self.sockets())
        if self.root.is_dir():
            stale.update(self.root.glob(f"{self.vsock_socket.name}_*"))
        for path in stale:
            path.unlink(missing_ok=True)

    def prepare(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.remove_stale_sockets()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class ConsoleLog:
    """A size-capped log of what a VMM writes: ``path`` plus one rotated ``path.1``."""

    def __init__(self, path: Path, cap_bytes: int) -> None:
        self.path = path
        self.rotated = path.with_name(path.name + ".1")
        self.cap_bytes = cap_bytes
        self._threads: list[threading.Thread] = []

    def start_fresh(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rotated.unlink(missing_ok=True)
        self.path.write_bytes(b"")

    def follow(self, fd: int) -> None:
        """Drain ``fd`` into the log from a thread until EOF, then close it."""
        thread = threading.Thread(
            target=self._drain, args=(fd,), name=f"console {self.path.parent.name}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _drain(self, fd: int) -> None:
        half = max(self.cap_bytes // 2, 1)
        try:
            handle = self.path.open("ab")
            while chunk := os.read(fd, 65536):
                chunk = chunk[-half:]
                if handle.tell() + len(chunk) > half:
                    handle.close()
                    os.replace(self.path, self.rotated)
                    handle = self.path.open("ab")
                handle.write(chunk)
                handle.flush()
            handle.close()
        except OSError:
            pass  # the log's directory went away (the VM was destroyed): nothing to keep
        finally:
            os.close(fd)

    def join(self, timeout_s: float) -> bool:
        """Wait (blocking) until every follower reached EOF; whether they all did."""
        for thread in self._threads:
            thread.join(timeout_s)
        return not any(thread.is_alive() for thread in self._threads)

    def tail(self, lines: int = 15, *, guest_only: bool = False) -> str:
        """The last lines; with ``guest_only``, without Firecracker's own log lines."""
        data = b""
        for path in (self.rotated, self.path):
            with contextlib.suppress(OSError):
                data += path.read_bytes()[-16384:]
        text = data.decode(errors="replace").replace("\r", "")
        kept = [
            line
            for line in text.splitlines()
            if line.strip() and not (guest_only and _VMM_LOG_LINE.match(line))
        ][-lines:]
        return "\n".join(kept) if kept else "(no output)"


class VMMPidfile(BaseModel):
    """Who a VMM is, written next to its sockets so a restarted server can find it."""

    pid: int
    start_ticks: int
    vm_id: str
    key: str
    labels: dict[str, str]
    started_at: datetime
    jailed: bool = False

    @classmethod
    def read(cls, path: Path) -> VMMPidfile | None:
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return None

    def write(self, path: Path) -> None:
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(self.model_dump_json())
        temporary.replace(path)


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 else None


class VMMProcess:
    """A running VMM, spawned by us (``child``) or adopted from a pidfile; held by a pidfd."""

    def __init__(self, pid: int, *, child: Process | None = None) -> None:
        self.pid = pid
        self.child = child
        self._pidfd = os.pidfd_open(pid)

    @property
    def exit_code(self) -> int | None:
        """The exit status when we spawned it and it ended; ``None`` otherwise."""
        return self.child.returncode if self.child is not None else None

    def running(self) -> bool:
        if self._pidfd < 0:
            return False
        readable, _, _ = select.select([self._pidfd], [], [], 0)
        return not readable

    async def wait(self) -> int | None:
        """Until it exits; its status if it is our child."""
        if self.child is not None:
            return await self.child.wait()
        if self._pidfd >= 0:
            await anyio.wait_readable(self._pidfd)
        return None

    def signal(self, signum: int) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signum)

    async def kill(self) -> None:
        """SIGKILL, then wait (bounded) until it is gone."""
        self.signal(signal.SIGKILL)
        with anyio.move_on_after(KILL_WAIT_S):
            await self.wait()

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


def adopt(pidfile: Path) -> tuple[VMMProcess, VMMPidfile] | None:
    """The VMM a pidfile names, if that very process still runs."""
    record = VMMPidfile.read(pidfile)
    if record is None or start_ticks(record.pid) != record.start_ticks:
        return None
    try:
        process = VMMProcess(record.pid)
    except (ProcessLookupError, OSError):
        return None
    if start_ticks(record.pid) != record.start_ticks:  # it ended and the pid was reused
        process.close()
        return None
    return process, record


async def spawn(
    argv: Sequence[str], *, console: ConsoleLog, pass_fds: Sequence[int] = ()
) -> VMMProcess:
    """Start a VMM in its own session, stdin from /dev/null, output into ``console``."""
    read_fd, write_fd = os.pipe()
    try:
        child = await anyio.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            pass_fds=pass_fds,
            start_new_session=True,  # a Ctrl-C meant for the server must not reach the VMs
        )
    except OSError as err:
        os.close(read_fd)
        raise VMOperationFailed(
            f"could not start {argv[0]}: {err}; check the firecracker driver's binary option"
        ) from err
    finally:
        os.close(write_fd)
    console.follow(read_fd)
    try:
        return VMMProcess(child.pid, child=child)
    except ProcessLookupError:
        # Gone before we could hold it: wrap what is left so the caller sees the exit.
        await child.wait()
        raise VMOperationFailed(
            f"{argv[0]} exited at once with status {child.returncode}: {console.tail()}"
        ) from None


# How long an exited VMM's output may take to reach the console log.
CONSOLE_DRAIN_S = 2.0


async def wait_for_api_socket(
    process: VMMProcess, socket_path: Path, console: ConsoleLog, timeout_s: float
) -> None:
    """Poll until the API socket accepts a connection; fail if the VMM exits first."""
    with anyio.move_on_after(timeout_s):
        while True:
            if not process.running():
                await process.wait()
                # Its last words may still be in the pipe: let the follower drain it first.
                await anyio.to_thread.run_sync(console.join, CONSOLE_DRAIN_S)
                raise VMOperationFailed(
                    f"Firecracker exited (status {process.exit_code}) before its API socket "
                    f"{socket_path} appeared: {console.tail()}"
                )
            with contextlib.suppress(OSError):
                stream = await anyio.connect_unix(socket_path)
                await stream.aclose()
                return
            await anyio.sleep(API_SOCKET_POLL_S)
    raise VMOperationFailed(
        f"Firecracker's API socket {socket_path} did not appear within {timeout_s:g}s: "
        f"{console.tail()}; the host may be overloaded"
    )
