"""The one place that decides who may do what.

Every project-scoped call is admitted here: membership and level (from the operation table),
the project's ``allowed_tools`` (named per operation, so MCP, REST and WebSocket are governed
alike), ownership of executions and locks, the advisory command allow/deny lists, which
environment wins, and the server's ceilings on what a project may ask for. No other module
makes an access decision; they ask this one.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from server.core.caller import Caller
from server.domain.config import Limits
from server.domain.errors import AccessDenied, InvalidInput, NotFound
from server.domain.models import AccessLevel, Project, ProjectSettings
from server.domain.operations import OPERATIONS, Operation
from server.store import Store

__all__ = ["Grant", "Policy"]


@dataclass(frozen=True)
class Grant:
    """An admitted call: who, on which project (as read when admitted), at which level."""

    caller: Caller
    project: Project
    level: AccessLevel

    @property
    def agent_id(self) -> str:
        return self.caller.agent_id

    @property
    def project_id(self) -> str:
        return self.project.project_id


def _not_visible(project_id: str, agent_id: str) -> NotFound:
    # Non-members learn nothing, not even that the project exists.
    return NotFound(
        f"no project {project_id!r} is visible to agent {agent_id!r}; list_projects shows "
        "yours, and an admin of the project can add you with assign_agent"
    )


class Policy:
    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self.limits = limits

    # -- admission ----------------------------------------------------------------------------

    async def admit(self, caller: Caller, project_id: str) -> Grant:
        """Admit ``caller``'s operation on a project, or refuse it with what to do instead."""
        needed = caller.spec.level
        if needed is None:
            raise AssertionError(f"{caller.operation} is not about one project")
        level = await self._store.members.level(project_id, caller.agent_id)
        project = await self._store.projects.get(project_id) if level is not None else None
        if project is None or level is None:
            raise _not_visible(project_id, caller.agent_id)
        if not level.allows(needed):
            raise AccessDenied(
                f"agent {caller.agent_id!r} has {level} access to project {project_id!r}; this "
                f"needs {needed} or higher; ask an admin of the project to change your level"
            )
        self.check_permitted(project, caller.operation)
        return Grant(caller, project, level)

    async def still_member(self, grant: Grant) -> bool:
        """Whether the caller still belongs to the project (re-checked when delivering later)."""
        return await self._store.members.level(grant.project_id, grant.agent_id) is not None

    @staticmethod
    def check_permitted(project: Project, operation: Operation) -> None:
        """The project's allowed_tools (empty = all), whatever surface the call came from."""
        allowed = project.settings.allowed_tools
        if not allowed or operation in allowed or OPERATIONS[operation].always_allowed:
            return
        raise AccessDenied(
            f"project {project.project_id} does not permit the tool {operation} (allowed_tools: "
            f"{', '.join(allowed)}); an admin can change allowed_tools with "
            "update_project_settings"
        )

    # -- ownership ----------------------------------------------------------------------------

    @staticmethod
    def check_owner(grant: Grant, owner: str, what: str, action: str) -> None:
        """Only ``owner`` (who started or holds ``what``) or an admin may ``action`` it."""
        if owner != grant.agent_id and grant.level != AccessLevel.ADMIN:
            raise AccessDenied(
                f"{what} belongs to {owner}; only {owner} or an admin of the project may "
                f"{action} it"
            )

    @staticmethod
    def check_member_removal(grant: Grant, member: str) -> None:
        """Anyone may leave a project; removing someone else takes an admin; the owner stays."""
        if member != grant.agent_id and grant.level != AccessLevel.ADMIN:
            raise AccessDenied(
                f"agent {grant.agent_id!r} has {grant.level} access to project "
                f"{grant.project_id!r}; removing another member needs admin; ask an admin"
            )
        if member == grant.project.owner_id:
            raise InvalidInput(
                f"{member} owns project {grant.project_id} and cannot be removed; delete the "
                "project instead"
            )

    # -- commands -----------------------------------------------------------------------------

    @staticmethod
    def check_command(project: Project, command: str) -> None:
        """The project's advisory allow/deny lists (shell patterns over the whole command line).

        Advisory only: a script or ``sh -c`` can run anything; the VM is the boundary.
        """
        settings = project.settings
        line = command.strip()
        for pattern in settings.command_denylist:
            if fnmatch.fnmatchcase(line, pattern):
                raise AccessDenied(
                    f"project {project.project_id} refuses commands matching {pattern!r} "
                    "(command_denylist); an admin can change it with update_project_settings"
                )
        allowed = settings.command_allowlist
        if allowed and not any(fnmatch.fnmatchcase(line, p) for p in allowed):
            raise AccessDenied(
                f"project {project.project_id} only runs commands matching "
                f"{', '.join(repr(p) for p in allowed)} (command_allowlist); an admin can "
                "change it"
            )

    @classmethod
    def check_terminal(cls, project: Project, command: str | None) -> None:
        """A terminal's program goes through the command lists; a login shell (no command)
        would run anything, so a project that lists the commands it allows refuses one."""
        if command is not None:
            cls.check_command(project, command)
        elif project.settings.command_allowlist:
            raise AccessDenied(
                f"project {project.project_id} only runs commands matching "
                f"{', '.join(repr(p) for p in project.settings.command_allowlist)} "
                "(command_allowlist), and a login shell would run anything; open the terminal "
                "with a command the list allows, or ask an admin to change it"
            )

    @staticmethod
    def command_environment(project: Project, env: Mapping[str, str] | None) -> dict[str, str]:
        """The environment of a command: the project's variables win over the caller's.

        They are the admins' policy; a member who needs another value asks an admin.
        """
        fixed = project.settings.environment_variables
        clashes = sorted(set(env or {}) & set(fixed))
        if clashes:
            raise AccessDenied(
                f"{', '.join(clashes)} {'is' if len(clashes) == 1 else 'are'} set by project "
                f"{project.project_id}'s environment_variables, which commands cannot "
                "override; leave it out of env, or ask an admin to change the setting"
            )
        return {**(env or {}), **fixed}

    # -- settings -----------------------------------------------------------------------------

    def check_settings(self, settings: ProjectSettings) -> None:
        """What this server allows any project, whatever its admin asks for."""
        limits = self.limits
        for name, value, cap in (
            ("cpus", settings.cpus, limits.max_project_cpus),
            ("memory_mb", settings.memory_mb, limits.max_project_memory_mb),
            ("max_storage_gb", settings.max_storage_gb, limits.max_project_storage_gb),
            ("pids_limit", settings.pids_limit, limits.max_project_pids),
            (
                "max_concurrent_executions",
                settings.max_concurrent_executions,
                limits.max_project_concurrent_executions,
            ),
        ):
            if value is not None and cap is not None and value > cap:
                raise InvalidInput(
                    f"{name}={value:g} is more than this server allows a project ({cap:g}); "
                    "choose a smaller value, or ask the operator to raise the limit in "
                    "config.toml"
                )
        self.check_operation_names(settings.allowed_tools)

    @staticmethod
    def check_operation_names(names: Iterable[str]) -> None:
        known = {operation.value for operation in Operation}
        unknown = sorted(set(names) - known)
        if unknown:
            raise InvalidInput(
                f"allowed_tools names unknown tools {', '.join(unknown)}; choose from "
                f"{', '.join(sorted(known))}"
            )
