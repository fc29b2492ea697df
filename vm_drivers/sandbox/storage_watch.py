"""Keeping ``max_storage_gb`` where the workspace cannot be a filesystem of its own.

When the server cannot mount a disk image (it is not root, or the host has no loop devices),
a watcher thread measures the workspace directory on the host and, when it has grown past the
limit, kills every process of the sandbox but the guest agent and bubblewrap's own: the
commands and whatever they left running detached. The agent reports those commands as killed;
the server then refuses API writes and gives new commands no room to write until files are
deleted. A process can still overshoot by what it writes between two measurements, which are
at least a second apart (more for a workspace that takes long to measure): this is a guard,
not a filesystem's limit, and ``probe()`` says so.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import threading
import time
from pathlib import Path

__all__ = ["StorageWatch", "allocated_bytes"]

log = logging.getLogger("projectvm.storage")

MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 30.0
# How many times the cost of one measurement to wait before the next.
COST_FACTOR = 20


def allocated_bytes(root: Path) -> int:
    """Bytes allocated under ``root`` (its own filesystem only, links not followed), walked
    without recursion: a deep tree cannot exhaust the stack."""
    device = root.stat().st_dev
    total = 0
    pending = [str(root)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += info.st_blocks * 512
            if stat.S_ISDIR(info.st_mode) and info.st_dev == device:
                pending.append(entry.path)
    return total


class StorageWatch:
    """Watches one sandbox's workspace against ``limit`` bytes until ``stop``."""

    def __init__(self, workspace: Path, limit: int, init_pid: int) -> None:
        self.workspace = workspace
        self.limit = limit
        self.init_pid = init_pid
        self.stopped_writers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"storage-watch-{workspace.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the watcher to end (it does within one interval); does not wait."""
        self._stop.set()

    def _run(self) -> None:
        previous = 0
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                used = allocated_bytes(self.workspace)
            except OSError:
                return  # the workspace is gone: its VM is being destroyed
            cost = time.monotonic() - began
            # Over the limit and still growing: someone is writing. Over but not growing (an
            # agent deleting files to get back under it) is left alone.
            if used > self.limit and used > previous:
                self.stopped_writers += self._stop_writers()
                log.warning(
                    "%s uses %d bytes, over its limit of %d: stopped its writers",
                    self.workspace,
                    used,
                    self.limit,
                )
            previous = used
            self._stop.wait(min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, cost * COST_FACTOR)))

    def _stop_writers(self) -> int:
        """SIGKILL every process under the sandbox's init except the agent (its oldest child)."""
        children = _children(self.init_pid)
        if not children:
            return 0
        agent = min(children, key=_start_time)
        victims = [pid for pid in children if pid != agent]
        pending = list(_children(agent))
        while pending:
            pid = pending.pop()
            victims.append(pid)
            pending.extend(_children(pid))
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(victims)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


def _start_time(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 2**63
    # Field 22, counted after the command name (which may hold spaces) in parentheses.
    return int(text.rsplit(")", 1)[1].split()[19])
