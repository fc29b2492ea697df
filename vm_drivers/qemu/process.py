"""The QEMU process of a VM: spawned detached, found again by its pidfile, waited on by pidfd.

QEMU is started with ``posix_spawn`` in its own session (a server restart or a Ctrl-C in the
server's terminal does not take VMs down) and is not an asyncio child: a later server adopts it
through the pidfile, which QEMU keeps locked while it runs. Exits are awaited through a pidfd,
which works for any process, child or not; our own children are reaped as they are seen to exit.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import anyio

__all__ = ["kill", "pid_from_pidfile", "process_alive", "spawn", "wait_exit"]

_children: set[int] = set()


def spawn(
    argv: Sequence[str], *, log: Path, extra_fds: dict[int, tuple[Path, int]] | None = None
) -> int:
    """Start ``argv`` with stdin from /dev/null and stdout/stderr into ``log``; return its pid.

    ``extra_fds`` maps a descriptor number in the child to a file and open flags (for QEMU's
    ``-incoming fd:N``).
    """
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    for number, (path, flags) in (extra_fds or {}).items():
        actions.append((os.POSIX_SPAWN_OPEN, number, str(path), flags, 0o600))
    pid = os.posix_spawn(argv[0], list(argv), dict(os.environ), file_actions=actions, setsid=True)
    _children.add(pid)
    return pid


def _reap(pid: int) -> None:
    if pid in _children:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _children.discard(pid)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    _reap(pid)
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def pid_from_pidfile(pidfile: Path, name: str) -> int | None:
    """The pid of the QEMU that holds ``pidfile`` locked and runs VM ``name``, if any."""
    try:
        fd = os.open(pidfile, os.O_RDWR)
    except OSError:
        return None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                return None
        else:
            return None  # nobody holds it: that QEMU is gone
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    finally:
        os.close(fd)
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if name.encode() not in cmdline or not process_alive(pid):
        return None
    return pid


async def wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit; True if it did."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        _reap(pid)
        return True
    try:
        # Readable once the whole thread group is gone; /proc can show a zombie leader while
        # QEMU's other threads still exit, and waitpid would not return it yet.
        with anyio.move_on_after(timeout):
            await anyio.wait_readable(pidfd)
            _reap(pid)
            return True
        return False
    finally:
        os.close(pidfd)


def kill(pid: int, signum: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
    _reap(pid)
