"""``ProjectService``: the business rules of ProjectVM, for every entry point.

It checks who may do what, keeps the store in step with the VMs, records every execution and
every change as it happens, and routes work through a driver's channel to the guest runtime. It
knows nothing of MCP or HTTP; tools and routes are thin layers over it. Commands live in
``server.executions``, file operations in ``server.files``, path locks in ``server.locks``.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc

from guest_runtime.errors import ProjectVMError
from server import progress
from server.channels import ChannelPool
from server.config import Limits
from server.errors import AccessDenied, InvalidInput, NotFound
from server.events import EventHub
from server.executions import Executions
from server.files import FileOps
from server.lifecycle import Lifecycle
from server.live import LiveExecution
from server.liveness import server_is_alive
from server.locks import PathLocks
from server.models import (
    AGENT_ID_PATTERN,
    AccessLevel,
    Project,
    ProjectSettings,
    ProjectType,
    VMStatus,
)
from server.queue import ExecutionQueue
from server.results import (
    EventsResult,
    MemberList,
    ProjectInfo,
    ProjectList,
    ResourceUsage,
    WhoAmI,
)
from server.storage import StorageGuard, limit_bytes
from server.store import Store, utcnow
from vm_drivers.errors import DriverError
from vm_drivers.registry import DriverSet

__all__ = ["ProjectService", "Runtime"]

MAX_EVENT_WAIT_S = 300.0
USAGE_TIMEOUT_S = 15.0
# Always usable whatever a project's allowed_tools say, so an admin can never lock itself out.
ALWAYS_ALLOWED_TOOLS = frozenset(
    {
        "create_project",
        "get_project",
        "list_projects",
        "update_project_settings",
        "delete_project",
        "whoami",
        "list_members",
    }
)
KEEP_FINISHED_LIVE = 64
# Settings the VM is made with: changing them takes a restart of the VM.
VM_LEVEL_SETTINGS = frozenset({"network", "cpus", "memory_mb", "pids_limit"})


@dataclass
class Runtime:
    """What the server holds in memory about one project."""

    queue: ExecutionQueue
    # When the project was last used (monotonic seconds); idle projects go to sleep.
    last_activity: float = field(default_factory=time.monotonic)
    activity_saved_at: float = 0.0
    # Serialises start/stop/delete/recovery.
    lifecycle: anyio.Lock = field(default_factory=anyio.Lock)
    # Serialises file changes, so a conflict always sees the event of the write that won.
    mutation: anyio.Lock = field(default_factory=anyio.Lock)
    # Set while a stop or delete is under way: why running commands are being killed.
    stopping: str | None = None
    live: dict[str, LiveExecution] = field(default_factory=dict)
    # Recently finished executions, so followers can read their output to the end.
    recent: deque[LiveExecution] = field(default_factory=lambda: deque(maxlen=KEEP_FINISHED_LIVE))

    def find(self, execution_id: str) -> LiveExecution | None:
        live = self.live.get(execution_id)
        if live is not None:
            return live
        return next((x for x in self.recent if x.execution.execution_id == execution_id), None)


class ProjectService:
    """Use as ``async with ProjectService(...) as service``; it owns the guest channels."""

    def __init__(
        self,
        store: Store,
        drivers: DriverSet,
        default_driver: str,
        limits: Limits | None = None,
    ) -> None:
        self.store = store
        self.drivers = drivers
        self.default_driver = default_driver
        self.limits = limits or Limits()
        self.runtimes: dict[str, Runtime] = {}
        self.events = EventHub()
        self.executions = Executions(self)
        self.files = FileOps(self)
        self.locks = PathLocks(self)
        self.lifecycle = Lifecycle(self)
        self.storage = StorageGuard(self)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._channels: ChannelPool | None = None

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._channels = ChannelPool(self._task_group)
        self.store.event_listeners.append(self.events.notify)
        self._task_group.start_soon(self.events.run_publishers)
        await self.store.interrupt_orphaned_executions(
            "the server stopped while this execution was queued or running", server_is_alive
        )
        await self.lifecycle.reconcile()
        self._task_group.start_soon(self.lifecycle.run_sleeper)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        assert self._channels is not None
        with anyio.CancelScope(shield=True):
            await self._channels.aclose()
        self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self.store.event_listeners.remove(self.events.notify)

    @property
    def channels(self) -> ChannelPool:
        if self._channels is None:
            raise RuntimeError("ProjectService is used outside its `async with` block")
        return self._channels

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        """Where background work (running commands) lives; it outlives any one request."""
        if self._task_group is None:
            raise RuntimeError("ProjectService is used outside its `async with` block")
        return self._task_group

    @staticmethod
    def new_id(prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(8)}"

    def runtime_of(self, project_id: str) -> Runtime:
        runtime = self.runtimes.get(project_id)
        if runtime is None:
            runtime = Runtime(queue=ExecutionQueue(ProjectSettings().max_concurrent_executions))
            self.runtimes[project_id] = runtime
        return runtime

    def runtime(self, project: Project) -> Runtime:
        """The project's runtime, its queue sized by the project's current settings."""
        runtime = self.runtime_of(project.project_id)
        if runtime.queue.limit != project.settings.max_concurrent_executions:
            runtime.queue.set_limit(project.settings.max_concurrent_executions)
        return runtime

    # -- identity and access ------------------------------------------------------------------

    async def ensure_agent(self, agent_id: str, *, user: str | None = None) -> None:
        if not AGENT_ID_PATTERN.match(agent_id):
            raise InvalidInput(
                f"{agent_id!r} is not a valid agent id: use 1-64 lowercase letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            )
        await self.store.ensure_agent(agent_id, user_id=user)

    async def authorize(
        self, agent_id: str, project_id: str, needed: AccessLevel
    ) -> tuple[Project, AccessLevel]:
        """The project and the caller's level, if the caller may act at ``needed`` level."""
        level = await self.store.member_level(project_id, agent_id)
        project = await self.store.get_project(project_id) if level is not None else None
        if project is None or level is None:
            # Non-members learn nothing, not even that the project exists.
            raise NotFound(
                f"no project {project_id!r} is visible to agent {agent_id!r}; list_projects shows "
                "yours, and an admin of the project can add you with assign_agent"
            )
        if not level.allows(needed):
            raise AccessDenied(
                f"agent {agent_id!r} has {level} access to project {project_id!r}; this needs "
                f"{needed} or higher; ask an admin of the project to change your level"
            )
        tool = progress.current_tool()
        allowed = project.settings.allowed_tools
        if tool and allowed and tool not in allowed and tool not in ALWAYS_ALLOWED_TOOLS:
            raise AccessDenied(
                f"project {project_id} does not permit the tool {tool} (allowed_tools: "
                f"{', '.join(allowed)}); an admin can change allowed_tools with "
                "update_project_settings"
            )
        await self.lifecycle.touch(project_id)
        return project, level

    # -- projects -----------------------------------------------------------------------------

    async def create_project(
        self,
        agent_id: str,
        name: str,
        description: str = "",
        project_type: str = ProjectType.DEVELOPMENT,
        settings: Mapping[str, Any] | None = None,
    ) -> ProjectInfo:
        name = name.strip()
        if not 1 <= len(name) <= 200:
            raise InvalidInput("name must be 1 to 200 characters")
        try:
            kind = ProjectType(project_type)
        except ValueError:
            raise InvalidInput(
                f"project_type {project_type!r} is not one of "
                f"{', '.join(t.value for t in ProjectType)}"
            ) from None
        project_settings = self._parse_settings(settings or {})
        self._check_caps(project_settings)
        await self.ensure_agent(agent_id)
        now = utcnow()
        project = Project(
            project_id=self.new_id("prj"),
            name=name,
            description=description,
            project_type=kind,
            driver=self.default_driver,
            vm_id=None,
            vm_status=VMStatus.CREATING,
            owner_id=agent_id,
            agents=[agent_id],
            created_at=now,
            updated_at=now,
            last_activity_at=now,
            settings=project_settings,
        )
        await self.store.insert_project(project)
        # Under the lifecycle lock: a start or delete of the new project waits for its VM.
        async with self.runtime_of(project.project_id).lifecycle:
            try:
                created = await self.lifecycle.create_vm(project)
            except DriverError as err:
                await self.lifecycle.set_status(
                    project, agent_id, VMStatus.FAILED, f"creation failed: {err}"
                )
                raise DriverError(
                    f"project {project.project_id} was recorded but its VM could not be "
                    f"created: {err}. Retry with start_project, or remove it with delete_project"
                ) from err
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.lifecycle.set_status(
                        project,
                        agent_id,
                        VMStatus.FAILED,
                        "creation was interrupted; call start_project to retry, or delete_project",
                    )
                raise
            await self.store.update_project(
                project.project_id,
                vm_id=created.vm_id,
                vm_status=created.status,
                vm_status_reason=None,
                vm_url=created.vm_url,
                workspace_path=created.workspace_path,
                event=(agent_id, "vm.status", {"status": created.status, "vm_id": created.vm_id}),
            )
        await self.lifecycle.touch(project.project_id)
        self.lifecycle.recheck_sleep()
        return await self.get_project(agent_id, project.project_id)

    def _check_caps(self, settings: ProjectSettings) -> None:
        """What this server allows any project, whatever its admin asks for."""
        limits = self.limits
        for name, value, cap in (
            ("cpus", settings.cpus, limits.max_project_cpus),
            ("memory_mb", settings.memory_mb, limits.max_project_memory_mb),
            ("max_storage_gb", settings.max_storage_gb, limits.max_project_storage_gb),
        ):
            if value is not None and cap is not None and value > cap:
                raise InvalidInput(
                    f"{name}={value:g} is more than this server allows a project ({cap:g}); "
                    "ask the operator, or choose a smaller value"
                )

    @staticmethod
    def _parse_settings(values: Mapping[str, Any]) -> ProjectSettings:
        try:
            return ProjectSettings.model_validate(dict(values))
        except ValueError as err:
            raise InvalidInput(f"invalid project settings: {err}") from err

    async def list_projects(self, agent_id: str) -> ProjectList:
        projects = await self.store.list_projects(agent_id)
        infos = []
        for project in projects:
            level = await self.store.member_level(project.project_id, agent_id)
            infos.append(ProjectInfo.of(project, level))
        return ProjectList(projects=infos)

    async def get_project(self, agent_id: str, project_id: str) -> ProjectInfo:
        project, level = await self.authorize(agent_id, project_id, AccessLevel.READ_ONLY)
        info = ProjectInfo.of(project, level)
        info.members = await self.store.list_members(project_id)
        info.usage = await self._usage(project)
        return info

    async def _usage(self, project: Project) -> ResourceUsage:
        """CPU, memory and workspace disk use, measured in the VM (a stopped one is not woken)."""
        usage = ResourceUsage(max_storage_bytes=limit_bytes(project))
        if project.vm_status != VMStatus.RUNNING:
            usage.note = f"the VM is {project.vm_status}; figures appear while it runs"
            return usage
        try:
            with anyio.fail_after(USAGE_TIMEOUT_S):
                client = await self.lifecycle.client(project)
                stats = await client.stats()
                usage.workspace_bytes = await self.storage.used_bytes(project, client, exact=True)
        except (TimeoutError, ProjectVMError) as err:
            usage.note = f"could not measure: {err or 'the VM did not answer in time'}"
            return usage
        usage.cpu_percent = stats.cpu_percent
        usage.cpu_count = stats.cpu_count
        usage.memory_used_bytes = stats.memory_used_bytes
        usage.memory_limit_bytes = stats.memory_limit_bytes
        usage.disk_free_bytes = stats.disk_free_bytes
        usage.load_average = stats.load_average
        return usage

    # -- members ------------------------------------------------------------------------------

    async def list_members(self, agent_id: str, project_id: str) -> MemberList:
        project, _ = await self.authorize(agent_id, project_id, AccessLevel.READ_ONLY)
        return MemberList(
            project_id=project_id,
            owner_id=project.owner_id,
            members=await self.store.list_members(project_id),
        )

    async def assign_agent(
        self, agent_id: str, project_id: str, member: str, access_level: str
    ) -> MemberList:
        project, _ = await self.authorize(agent_id, project_id, AccessLevel.ADMIN)
        try:
            level = AccessLevel(access_level)
        except ValueError:
            raise InvalidInput(
                f"access_level {access_level!r} is not one of "
                f"{', '.join(a.value for a in AccessLevel)}"
            ) from None
        if await self.store.get_agent(member) is None:
            raise NotFound(
                f"no agent {member!r} is known here; create it first "
                f"(`projectvm agents add {member}`), then assign it"
            )
        if member == project.owner_id and level != AccessLevel.ADMIN:
            raise InvalidInput(f"{member} owns project {project_id} and stays admin")
        await self.store.set_member(project_id, member, level, agent_id)
        return await self.list_members(agent_id, project_id)

    async def remove_agent(self, agent_id: str, project_id: str, member: str) -> MemberList:
        # Anyone may leave a project; removing someone else takes an admin.
        needed = AccessLevel.READ_ONLY if member == agent_id else AccessLevel.ADMIN
        project, _ = await self.authorize(agent_id, project_id, needed)
        if member == project.owner_id:
            raise InvalidInput(
                f"{member} owns project {project_id} and cannot be removed; delete the "
                "project instead"
            )
        if not await self.store.remove_member(project_id, member, agent_id):
            raise NotFound(f"{member} is not a member of project {project_id}")
        if member == agent_id:
            return MemberList(project_id=project_id, owner_id=project.owner_id, members=[])
        return await self.list_members(agent_id, project_id)

    async def whoami(self, agent_id: str, transport: Literal["stdio", "http", "memory"]) -> WhoAmI:
        projects = await self.store.list_projects(agent_id)
        levels = {}
        for project in projects:
            level = await self.store.member_level(project.project_id, agent_id)
            if level is not None:
                levels[project.project_id] = level
        return WhoAmI(agent_id=agent_id, transport=transport, projects=levels)

    # -- settings -----------------------------------------------------------------------------

    async def update_settings(
        self, agent_id: str, project_id: str, changes: Mapping[str, Any]
    ) -> ProjectInfo:
        """Change some settings (the rest stay); recorded as an event with old and new."""
        project, _ = await self.authorize(agent_id, project_id, AccessLevel.ADMIN)
        if not changes:
            raise InvalidInput("settings is empty; give the settings to change")
        before = project.settings.model_dump()
        after = self._parse_settings({**before, **changes})
        self._check_caps(after)
        changed = {
            key: {"from": before[key], "to": value}
            for key, value in after.model_dump().items()
            if before[key] != value
        }
        await self.store.update_project(
            project_id,
            settings=after,
            event=(agent_id, "settings.updated", {"changed": changed}),
        )
        self.runtime_of(project_id).queue.set_limit(after.max_concurrent_executions)
        self.lifecycle.recheck_sleep()
        info = await self.get_project(agent_id, project_id)
        later = sorted(set(changed) & VM_LEVEL_SETTINGS)
        if later and project.vm_status == VMStatus.RUNNING:
            info.notes = [
                f"{', '.join(later)} apply when the VM next starts: stop_project, then "
                "start_project (commands running now are killed by the stop)"
            ]
        return info

    # -- events -------------------------------------------------------------------------------

    async def get_events(
        self,
        agent_id: str,
        project_id: str,
        *,
        since_id: int = 0,
        wait_s: float = 0,
        limit: int = 200,
    ) -> EventsResult:
        """Events after ``since_id`` in order; with ``wait_s``, wait that long for the next."""
        await self.authorize(agent_id, project_id, AccessLevel.READ_ONLY)
        if not 0 <= wait_s <= MAX_EVENT_WAIT_S or not 1 <= limit <= 1000:
            raise InvalidInput(
                f"wait_s must be between 0 and {MAX_EVENT_WAIT_S:g}, limit between 1 and 1000"
            )
        changed = self.events.changed(project_id)
        events = await self.store.list_events(project_id, since_id=since_id, limit=limit)
        if not events and wait_s > 0:
            with anyio.move_on_after(wait_s):
                await changed.wait()
            events = await self.store.list_events(project_id, since_id=since_id, limit=limit)
        return EventsResult(
            project_id=project_id,
            events=events,
            last_event_id=events[-1].event_id if events else since_id,
        )

    async def recent_events(self, agent_id: str, project_id: str, limit: int) -> EventsResult:
        """The last ``limit`` events of a project, oldest first."""
        await self.authorize(agent_id, project_id, AccessLevel.READ_ONLY)
        events = await self.store.list_recent_events(project_id, limit)
        return EventsResult(
            project_id=project_id,
            events=events,
            last_event_id=events[-1].event_id if events else 0,
        )
