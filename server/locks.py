"""Advisory path locks: while an agent holds a lock on a path (or a directory above it), file
writes by other agents there are refused with the holder and the expiry. Locks expire on their
own. They are advisory: commands run in the VM are not checked, the VM is the boundary.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from server.errors import AccessDenied, Conflict, InvalidInput
from server.models import AccessLevel, PathLock
from server.results import LockList, LockResult
from server.store import utcnow

if TYPE_CHECKING:
    from server.service import ProjectService

__all__ = ["PathLocks", "lock_key", "overlaps"]

MAX_TTL_S = 24 * 3600.0
WORKSPACE_ROOT = "/workspace"


def lock_key(path: str) -> str:
    """A path as locks compare it: relative to the workspace root, normalised ('' = root).

    The same lexical rules as the guest's: ``..`` may not climb above the root and absolute
    paths must lie under it.
    """
    if "\x00" in path:
        raise InvalidInput("path contains a NUL byte")
    if path == WORKSPACE_ROOT or path.startswith(WORKSPACE_ROOT + "/"):
        path = path[len(WORKSPACE_ROOT) :]
    elif path.startswith("/"):
        raise InvalidInput(f"path {path!r} is outside the workspace")
    parts: list[str] = []
    for piece in path.split("/"):
        if piece in ("", "."):
            continue
        if piece == "..":
            if not parts:
                raise InvalidInput(f"path {path!r} climbs above the workspace root")
            parts.pop()
            continue
        parts.append(piece)
    return "/".join(parts)


def overlaps(locked: str, path: str) -> bool:
    """Whether a lock on ``locked`` covers ``path`` (or ``path`` contains it)."""
    if not locked or not path:
        return True
    return locked == path or path.startswith(locked + "/") or locked.startswith(path + "/")


class PathLocks:
    def __init__(self, service: ProjectService) -> None:
        self.service = service

    async def _holders(self, project_id: str, path: str, agent_id: str) -> list[PathLock]:
        key = lock_key(path)
        return [
            lock
            for lock in await self.service.store.live_locks(project_id)
            if lock.agent_id != agent_id and overlaps(lock.path, key)
        ]

    async def check_write(self, agent_id: str, project_id: str, *paths: str) -> None:
        """Refuse a write under a lock held by another agent."""
        for path in paths:
            try:
                held = await self._holders(project_id, path, agent_id)
            except InvalidInput:
                continue  # not a workspace path: the guest refuses it with the full story

            if held:
                lock = held[0]
                raise Conflict(
                    f"{path} is locked by {lock.agent_id} until {lock.expires_at.isoformat()} "
                    f"(lock on '{lock.path or '/'}'); wait for it to be released or to expire, "
                    f"or ask {lock.agent_id}",
                    changed_by=lock.agent_id,
                )

    async def lock(
        self, agent_id: str, project_id: str, path: str, ttl_s: float = 300
    ) -> LockResult:
        await self.service.authorize(agent_id, project_id, AccessLevel.READ_WRITE)
        if not 0 < ttl_s <= MAX_TTL_S:
            raise InvalidInput(f"ttl_s must be between 0 and {MAX_TTL_S:g} seconds")
        key = lock_key(path)
        async with self.service.runtime_of(project_id).mutation:
            held = await self._holders(project_id, key, agent_id)
            if held:
                lock = held[0]
                raise Conflict(
                    f"'{lock.path or '/'}' is locked by {lock.agent_id} until "
                    f"{lock.expires_at.isoformat()}; try again after that",
                    changed_by=lock.agent_id,
                )
            now = utcnow()
            lock = PathLock(
                path=key,
                agent_id=agent_id,
                acquired_at=now,
                expires_at=now + timedelta(seconds=ttl_s),
            )
            await self.service.store.put_lock(project_id, lock)
        return LockResult(project_id=project_id, lock=lock, locked=True)

    async def unlock(self, agent_id: str, project_id: str, path: str) -> LockResult:
        _, level = await self.service.authorize(agent_id, project_id, AccessLevel.READ_WRITE)
        key = lock_key(path)
        async with self.service.runtime_of(project_id).mutation:
            current = {
                lock.path: lock for lock in await self.service.store.live_locks(project_id)
            }.get(key)
            if current is None:
                return LockResult(project_id=project_id, lock=None, locked=False)
            if current.agent_id != agent_id and level != AccessLevel.ADMIN:
                raise AccessDenied(
                    f"the lock on '{key or '/'}' belongs to {current.agent_id}; only its holder "
                    "or an admin may release it"
                )
            await self.service.store.delete_lock(project_id, key, agent_id)
        return LockResult(project_id=project_id, lock=current, locked=False)

    async def list(self, agent_id: str, project_id: str) -> LockList:
        await self.service.authorize(agent_id, project_id, AccessLevel.READ_ONLY)
        return LockList(
            project_id=project_id, locks=await self.service.store.live_locks(project_id)
        )
