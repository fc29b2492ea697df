"""Where every project-scoped call enters: the policy admits it, and its activity is noted."""

from __future__ import annotations

from server.core.access import Grant, Policy
from server.core.activity import Activity
from server.core.caller import Caller

__all__ = ["Gate"]


class Gate:
    def __init__(self, policy: Policy, activity: Activity) -> None:
        self.policy = policy
        self._activity = activity

    async def admit(self, caller: Caller, project_id: str) -> Grant:
        grant = await self.policy.admit(caller, project_id)
        if caller.spec.activity:
            await self._activity.touch(project_id)
        return grant
