"""How much space the workspace uses, without walking it on every call.

Where the workspace is a filesystem of its own (a VM's data disk, a quota or loop mount: the
mount at the root is the root of its filesystem), the filesystem's own counters answer at once.
Elsewhere (a directory bound into a sandbox or container) the tree is walked: iteratively, up
to a deadline (past it the count is partial and says so), and the result is kept: a caller may
accept one up to ``max_age_s`` old, and the agent never walks more than about a tenth of its
time (a walk that took 1 s is reused for 10 s). Changes made through the agent's own file
calls are added to the kept count as they happen, so only commands make it drift.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict, Optional

from .methods import FsUsage, parse
from .paths import DIR_FLAGS, Workspace
from .walk import Walk

DEFAULT_WALK_TIMEOUT_S = 10.0
MAX_WALK_TIMEOUT_S = 120.0
# A walk's result is reused for this many times as long as the walk took.
REUSE_FACTOR = 10.0


def _unescape(field: str) -> str:
    """A mountinfo path (spaces and the like are written as octal escapes)."""
    out = []
    index = 0
    while index < len(field):
        if field[index] == "\\" and field[index + 1 : index + 4].isdigit():
            out.append(chr(int(field[index + 1 : index + 4], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def is_own_filesystem(root: str) -> bool:
    """Whether ``root`` is where a filesystem is mounted whole (not a bind of a subdirectory)."""
    try:
        with open("/proc/self/mountinfo") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return False
    found = None
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == root:
            found = _unescape(fields[3])  # the last mount on a point is the one visible
    return found == "/"


class _Walked:
    def __init__(self, used: int, files: int, complete: bool, cost: float) -> None:
        self.used = used
        self.files = files
        self.complete = complete
        self.cost = cost
        self.at = time.monotonic()


class UsageMeter:
    """Handler of ``fs.usage``; the file calls report their changes through ``account``."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._walked: Optional[_Walked] = None
        self._lock = threading.Lock()  # guards the kept result
        self._walking = threading.Lock()  # one walk at a time; callers meanwhile share it

    def account(self, delta_bytes: int, delta_files: int = 0) -> None:
        with self._lock:
            if self._walked is not None:
                self._walked.used = max(0, self._walked.used + delta_bytes)
                self._walked.files = max(0, self._walked.files + delta_files)

    def usage(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(FsUsage, params)
        started = time.monotonic()
        root = self.workspace.root
        vfs = os.statvfs(root)
        answer: Dict[str, Any] = {
            "fs_total_bytes": vfs.f_blocks * vfs.f_frsize,
            "fs_free_bytes": vfs.f_bavail * vfs.f_frsize,
        }
        if is_own_filesystem(root):
            answer.update(
                used_bytes=(vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize,
                files=max(0, vfs.f_files - vfs.f_ffree - 1),  # the root directory itself
                method="filesystem",
                complete=True,
                age_ms=0,
            )
        else:
            walked = self._walked_result(request)
            answer.update(
                used_bytes=walked.used,
                files=walked.files,
                method="walk",
                complete=walked.complete,
                age_ms=int((time.monotonic() - walked.at) * 1000),
            )
        answer["elapsed_ms"] = int((time.monotonic() - started) * 1000)
        return answer

    def _walked_result(self, request: FsUsage) -> _Walked:
        with self._walking:
            with self._lock:
                kept = self._walked
            if kept is not None:
                age = time.monotonic() - kept.at
                if age <= max(request.max_age_s or 0.0, REUSE_FACTOR * kept.cost):
                    return kept
            timeout = min(request.timeout_s or DEFAULT_WALK_TIMEOUT_S, MAX_WALK_TIMEOUT_S)
            walked = self._walk(timeout)
            with self._lock:
                self._walked = walked
            return walked

    def _walk(self, timeout: float) -> _Walked:
        started = time.monotonic()
        used = 0
        files = 0
        walk = Walk(os.open(self.workspace.root, DIR_FLAGS), [], deadline=started + timeout)
        with walk:
            for entry in walk:
                used += entry.st.st_blocks * 512
                files += 1
        return _Walked(used, files, walk.complete, time.monotonic() - started)
