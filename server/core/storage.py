"""``max_storage_gb``: how much of it a workspace uses, and keeping writes and commands under it.

File writes through the API are checked before anything is written, against the measured usage
(allocated blocks) adjusted by the sizes written since. Commands cannot grow any one file past
the whole limit (RLIMIT_FSIZE: a write past it fails with "File too large"), and none may write
at all while the workspace is over its limit (only deleting works then). Near the limit the
usage is measured again right after each command, and a command that took the workspace over
it is reported as failed; far from it, measuring is left to the next write. The measurement
walks the workspace in the guest, so it is cached for a few seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from guest_runtime.client import GuestClient
from server.domain.errors import LimitExceeded
from server.domain.models import Project

__all__ = ["StorageGuard", "limit_bytes"]

USAGE_MAX_AGE_S = 5.0
# From this share of the limit on, every command's effect is measured right away.
NEAR_LIMIT = 0.8
GIB = 1024**3


def limit_bytes(project: Project) -> int:
    return int(project.settings.max_storage_gb * GIB)


@dataclass
class _Usage:
    used_bytes: int
    measured_at: float
    stale: bool = False  # a command ran since: only good enough for a command's budget


class StorageGuard:
    def __init__(self) -> None:
        self._usage: dict[str, _Usage] = {}

    async def used_bytes(self, project: Project, client: GuestClient, *, exact: bool) -> int:
        """Bytes the workspace uses; ``exact`` re-measures after a command changed things."""
        cached = self._usage.get(project.project_id)
        fresh = cached is not None and time.monotonic() - cached.measured_at < USAGE_MAX_AGE_S
        if cached is not None and fresh and not (exact and cached.stale):
            return cached.used_bytes
        measured = (await client.usage()).used_bytes
        self._usage[project.project_id] = _Usage(measured, time.monotonic())
        return measured

    def forget(self, project_id: str) -> None:
        """Something changed the workspace in ways we cannot count (a command ran)."""
        cached = self._usage.get(project_id)
        if cached is not None:
            cached.stale = True

    async def check_write(
        self, project: Project, client: GuestClient, path: str, new_size: int, append: bool
    ) -> None:
        """Refuse a write that would take the workspace past ``max_storage_gb``."""
        limit = limit_bytes(project)
        used = await self.used_bytes(project, client, exact=True)
        current = await client.stat(path)
        before = 0
        if current.exists and current.type == "file" and current.size is not None:
            before = current.size
        after = used + new_size if append else used - before + new_size
        if after > limit:
            raise LimitExceeded(
                f"writing {path} ({new_size} bytes) would bring the workspace to {after} bytes, "
                f"over its max_storage_gb of {project.settings.max_storage_gb:g} ({limit} bytes; "
                f"{used} used now); delete files, or ask an admin to raise max_storage_gb"
            )

    async def room(self, project: Project, client: GuestClient) -> int:
        """How many bytes a change may add before the workspace passes ``max_storage_gb``."""
        return limit_bytes(project) - await self.used_bytes(project, client, exact=True)

    def wrote(self, project_id: str, previous_size: int, new_size: int) -> None:
        cached = self._usage.get(project_id)
        if cached is not None:
            cached.used_bytes += new_size - previous_size

    async def file_size_limit(self, project: Project, client: GuestClient) -> int:
        """How large a command may make any one file: the whole limit, or 0 when over it.

        (A per-file limit of "the space left" would break rewriting big existing files.)
        """
        limit = limit_bytes(project)
        return limit if await self.used_bytes(project, client, exact=False) < limit else 0

    async def over_limit_after_command(self, project: Project, client: GuestClient) -> str | None:
        """After a command: if the workspace was near its limit, measure; say if it is over."""
        limit = limit_bytes(project)
        cached = self._usage.get(project.project_id)
        if cached is None or cached.used_bytes < limit * NEAR_LIMIT:
            return None
        used = await self.used_bytes(project, client, exact=True)
        if used <= limit:
            return None
        return (
            f"the workspace now uses {used} bytes, over its max_storage_gb of "
            f"{project.settings.max_storage_gb:g} ({limit} bytes): writes are refused until "
            "files are deleted, or an admin raises max_storage_gb"
        )
