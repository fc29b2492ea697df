"""Advisory path locks as writes see them: which lock, if any, covers a path.

While an agent holds a lock on a path (or a directory above it), file writes by other agents
there are refused with the holder and the expiry. Locks are advisory: commands run in the VM
are not checked; the VM is the boundary.
"""

from __future__ import annotations

from guest_runtime.client import GuestClient
from guest_runtime.errors import GuestError
from server.domain.errors import Conflict, InvalidInput
from server.domain.models import PathLock
from server.store import Store, utcnow

__all__ = ["PathLockTable", "lock_key", "overlaps"]

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


class PathLockTable:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def live(self, project_id: str) -> list[PathLock]:
        return await self._store.locks.live(project_id, utcnow())

    async def held_by_others(self, project_id: str, key: str, agent_id: str) -> list[PathLock]:
        return [
            lock
            for lock in await self.live(project_id)
            if lock.agent_id != agent_id and overlaps(lock.path, key)
        ]

    async def canonical(self, client: GuestClient, path: str) -> str:
        """``path`` as the guest resolves it (``..`` and symlinks in it followed), as a lock
        key. What cannot be resolved is refused: a lock must never be walked around."""
        try:
            resolved = (await client.stat(path)).path
        except GuestError as err:
            raise InvalidInput(
                f"cannot tell which file {path!r} is ({err}); use a plain workspace path"
            ) from err
        return lock_key("" if resolved == "." else resolved)

    async def check_write(
        self, project_id: str, agent_id: str, client: GuestClient, *paths: str
    ) -> None:
        """Refuse a write under a lock held by another agent, however the path is spelled."""
        for path in paths:
            held = await self.held_by_others(
                project_id, await self.canonical(client, path), agent_id
            )
            if held:
                lock = held[0]
                raise Conflict(
                    f"{path} is locked by {lock.agent_id} until {lock.expires_at.isoformat()} "
                    f"(lock on '{lock.path or '/'}'); wait for it to be released or to expire, "
                    f"or ask {lock.agent_id}",
                    changed_by=lock.agent_id,
                )
