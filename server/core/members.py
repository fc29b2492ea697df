"""The membership operations: who belongs to a project, at which level; who am I."""

from __future__ import annotations

from server.core.caller import Caller
from server.core.gate import Gate
from server.core.journal import Journal
from server.core.requests import AssignAgent, ListMembers, RemoveAgent, WhoAmI
from server.core.results import MemberList
from server.core.results import WhoAmI as WhoAmIResult
from server.domain.errors import InvalidInput, NotFound
from server.domain.events import MemberAssigned, MemberRemoved
from server.domain.models import AccessLevel
from server.store import Store

__all__ = ["Members"]


class Members:
    def __init__(self, store: Store, journal: Journal, gate: Gate) -> None:
        self._store = store
        self._journal = journal
        self._gate = gate

    async def list(self, caller: Caller, request: ListMembers) -> MemberList:
        grant = await self._gate.admit(caller, request.project_id)
        return MemberList(
            project_id=grant.project_id,
            owner_id=grant.project.owner_id,
            members=await self._store.members.list(grant.project_id),
        )

    async def assign(self, caller: Caller, request: AssignAgent) -> MemberList:
        grant = await self._gate.admit(caller, request.project_id)
        level = AccessLevel(request.access_level)
        member = request.agent_id
        if await self._store.agents.get(member) is None:
            raise NotFound(
                f"no agent {member!r} is known here; create it first "
                f"(`projectvm agents add {member}`), then assign it"
            )
        if member == grant.project.owner_id and level != AccessLevel.ADMIN:
            raise InvalidInput(f"{member} owns project {grant.project_id} and stays admin")
        async with self._journal.change() as change:
            await change.store.members.set(grant.project_id, member, level, caller.agent_id)
            await change.record(
                grant.project_id,
                caller.agent_id,
                MemberAssigned(member=member, access_level=level),
            )
        return MemberList(
            project_id=grant.project_id,
            owner_id=grant.project.owner_id,
            members=await self._store.members.list(grant.project_id),
        )

    async def remove(self, caller: Caller, request: RemoveAgent) -> MemberList:
        grant = await self._gate.admit(caller, request.project_id)
        member = request.agent_id
        self._gate.policy.check_member_removal(grant, member)
        async with self._journal.change() as change:
            removed = await change.store.members.remove(grant.project_id, member)
            if removed:
                await change.record(grant.project_id, caller.agent_id, MemberRemoved(member=member))
        if not removed:
            raise NotFound(f"{member} is not a member of project {grant.project_id}")
        owner = grant.project.owner_id
        if member == caller.agent_id:
            return MemberList(project_id=grant.project_id, owner_id=owner, members=[])
        return MemberList(
            project_id=grant.project_id,
            owner_id=owner,
            members=await self._store.members.list(grant.project_id),
        )

    async def whoami(self, caller: Caller, request: WhoAmI) -> WhoAmIResult:
        return WhoAmIResult(
            agent_id=caller.agent_id,
            transport=caller.surface,
            projects=await self._store.members.levels_of(caller.agent_id),
        )
