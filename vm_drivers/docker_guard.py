"""The docker driver's ``max_storage_gb`` guard, for workspaces that cannot be a disk of their
own (the server cannot mount, or the engine runs elsewhere).

A watcher thread per running container measures ``/workspace`` inside it (one short exec) and,
when it has grown past the limit, kills every process of the container except its init (PID 1)
and the processes the engine started with ``exec`` (the guest agent: their parent is outside
the container, so inside it is 0): the commands and whatever they left running detached. A
process can still overshoot by what it writes between two measurements, at least two seconds
apart: this is a guard, not a filesystem's limit, and ``probe()`` says so.

The docker SDK is synchronous; the watcher runs it in its own thread, never on the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["ContainerStorageWatch"]

log = logging.getLogger("projectvm.docker")

MIN_INTERVAL_S = 2.0
MAX_INTERVAL_S = 30.0
COST_FACTOR = 20
# Bytes allocated under /workspace (its own filesystem, links not followed), without recursion.
MEASURE = """
import os, stat
root = '/workspace'; device = os.lstat(root).st_dev; total = 0; pending = [root]
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
print(total)
"""
# SIGKILL every process but PID 1 and the engine's execs (parent 0): commands and orphans.
STOP = """
import os, signal
killed = 0
for name in os.listdir('/proc'):
    if not name.isdigit() or int(name) in (1, os.getpid()):
        continue
    try:
        with open('/proc/%s/stat' % name) as handle:
            ppid = int(handle.read().rsplit(')', 1)[1].split()[1])
        if ppid != 0:
            os.kill(int(name), signal.SIGKILL)
            killed += 1
    except (OSError, ValueError):
        pass
print(killed)
"""


class ContainerStorageWatch:
    """Watches one container's workspace against ``limit`` bytes until ``stop``."""

    def __init__(self, container: Any, limit: int) -> None:
        self.container = container
        self.limit = limit
        self.stopped_writers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"storage-watch-{container.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the watcher to end (it does within one interval); does not wait."""
        self._stop.set()

    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def _python(self, code: str) -> int | None:
        try:
            result = self.container.exec_run(["python3", "-c", code], demux=False)
            return int(result.output.strip()) if result.exit_code == 0 else None
        except Exception:  # the container stopped or vanished: the next round tells
            return None

    def _run(self) -> None:
        previous = 0
        while not self._stop.is_set():
            began = time.monotonic()
            used = self._python(MEASURE)
            cost = time.monotonic() - began
            if used is not None:
                if used > self.limit and used > previous:
                    self.stopped_writers += self._python(STOP) or 0
                    log.warning(
                        "container %s uses %d bytes in /workspace, over its limit of %d: "
                        "stopped its writers",
                        self.container.name,
                        used,
                        self.limit,
                    )
                previous = used
            self._stop.wait(min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, cost * COST_FACTOR)))
