"""The lock operations: take, release and list advisory path locks."""

from __future__ import annotations

from datetime import timedelta

from server.core.access import Grant
from server.core.caller import Caller
from server.core.gate import Gate
from server.core.journal import Journal
from server.core.lifecycle import Lifecycle
from server.core.path_locks import PathLockTable, lock_key
from server.core.requests import ListLocks, LockPath, UnlockPath
from server.core.results import LockList, LockResult
from server.core.runtime import Runtimes
from server.domain.errors import Conflict, InvalidInput
from server.domain.events import LockAcquired, LockReleased
from server.domain.models import PathLock
from server.store import utcnow

__all__ = ["Locks"]

MAX_TTL_S = 24 * 3600.0


class Locks:
    def __init__(
        self,
        journal: Journal,
        gate: Gate,
        lifecycle: Lifecycle,
        runtimes: Runtimes,
        table: PathLockTable,
    ) -> None:
        self._journal = journal
        self._gate = gate
        self._lifecycle = lifecycle
        self._runtimes = runtimes
        self._table = table

    async def _key(self, caller: Caller, grant: Grant, path: str) -> str:
        """The path as writes will be compared with it: resolved by the guest."""
        client = await self._lifecycle.client(grant.project, caller.report)
        return await self._table.canonical(client, path)

    async def lock(self, caller: Caller, request: LockPath) -> LockResult:
        grant = await self._gate.admit(caller, request.project_id)
        if not 0 < request.ttl_s <= MAX_TTL_S:
            raise InvalidInput(f"ttl_s must be between 0 and {MAX_TTL_S:g} seconds")
        key = await self._key(caller, grant, request.path)
        project_id = grant.project_id
        async with self._runtimes.of(project_id).mutation:
            held = await self._table.held_by_others(project_id, key, caller.agent_id)
            if held:
                other = held[0]
                raise Conflict(
                    f"'{other.path or '/'}' is locked by {other.agent_id} until "
                    f"{other.expires_at.isoformat()}; try again after that",
                    changed_by=other.agent_id,
                )
            now = utcnow()
            lock = PathLock(
                path=key,
                agent_id=caller.agent_id,
                acquired_at=now,
                expires_at=now + timedelta(seconds=request.ttl_s),
            )
            async with self._journal.change() as change:
                await change.store.locks.purge_expired(project_id, now)
                await change.store.locks.put(project_id, lock)
                await change.record(
                    project_id, caller.agent_id, LockAcquired(path=key, expires_at=lock.expires_at)
                )
        return LockResult(project_id=project_id, lock=lock, locked=True)

    async def unlock(self, caller: Caller, request: UnlockPath) -> LockResult:
        grant = await self._gate.admit(caller, request.project_id)
        try:
            key = await self._key(caller, grant, request.path)
        except InvalidInput:
            key = lock_key(request.path)  # release by its recorded spelling, whatever it is
        project_id = grant.project_id
        async with self._runtimes.of(project_id).mutation:
            current = {lock.path: lock for lock in await self._table.live(project_id)}.get(key)
            if current is None:
                return LockResult(project_id=project_id, lock=None, locked=False)
            self._gate.policy.check_owner(
                grant, current.agent_id, f"the lock on '{key or '/'}'", "release"
            )
            async with self._journal.change() as change:
                if await change.store.locks.delete(project_id, key):
                    await change.record(project_id, caller.agent_id, LockReleased(path=key))
        return LockResult(project_id=project_id, lock=current, locked=False)

    async def list(self, caller: Caller, request: ListLocks) -> LockList:
        grant = await self._gate.admit(caller, request.project_id)
        return LockList(project_id=grant.project_id, locks=await self._table.live(grant.project_id))
