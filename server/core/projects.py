"""The project operations: create, list, show, start, stop, delete, change settings."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import anyio
from pydantic import ValidationError

from guest_runtime.errors import ProjectVMError
from server.core.caller import Caller
from server.core.costs import CostMeter
from server.core.gate import Gate
from server.core.ids import new_id
from server.core.journal import Journal
from server.core.lifecycle import Lifecycle
from server.core.requests import (
    CreateProject,
    DeleteProject,
    GetProject,
    ListProjects,
    StartProject,
    StopProject,
    UpdateProjectSettings,
)
from server.core.results import DeleteResult, ProjectInfo, ProjectList, ProjectStatus, ResourceUsage
from server.core.runtime import Runtimes
from server.core.storage import StorageGuard, limit_bytes
from server.core.wakeup import Wakeup
from server.domain.errors import InvalidInput, NotFound
from server.domain.events import ProjectCreated, ProjectDeleted, SettingsUpdated
from server.domain.invalid import describe
from server.domain.models import (
    AGENT_ID_PATTERN,
    AccessLevel,
    Project,
    ProjectSettings,
    ProjectType,
    VMStatus,
)
from server.domain.operations import Operation
from server.store import Store, utcnow
from vm_drivers.base import ReportsStorageMode
from vm_drivers.errors import DriverError

__all__ = ["Projects", "check_agent_id"]

USAGE_TIMEOUT_S = 15.0
# The most entries a list or object setting may have (patterns, tools, variables).
MAX_SETTING_ENTRIES = 1000
# Settings the VM is made with: changing them takes a restart of the VM.
VM_LEVEL_SETTINGS = frozenset({"network", "cpus", "memory_mb", "pids_limit"})


def check_agent_id(agent_id: str) -> None:
    if not AGENT_ID_PATTERN.match(agent_id):
        raise InvalidInput(
            f"{agent_id!r} is not a valid agent id: use 1-64 lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )


class Projects:
    def __init__(
        self,
        store: Store,
        journal: Journal,
        gate: Gate,
        lifecycle: Lifecycle,
        sleep_recheck: Wakeup,
        runtimes: Runtimes,
        storage: StorageGuard,
        costs: CostMeter,
        default_driver: str,
    ) -> None:
        self._store = store
        self._journal = journal
        self._gate = gate
        self._lifecycle = lifecycle
        self._sleep_recheck = sleep_recheck
        self._runtimes = runtimes
        self._storage = storage
        self._costs = costs
        self.default_driver = default_driver
        self._storage_modes: dict[str, str | None] = {}

    # -- creating -----------------------------------------------------------------------------

    def parse_settings(self, values: Mapping[str, Any]) -> ProjectSettings:
        for name, value in values.items():
            # Each entry of a list or object is validated (and may be an error) of its own.
            if isinstance(value, list | dict) and len(value) > MAX_SETTING_ENTRIES:
                raise InvalidInput(
                    f"invalid project settings: {str(name)[:40]} has {len(value)} entries; "
                    f"at most {MAX_SETTING_ENTRIES} are accepted"
                )
        try:
            settings = ProjectSettings.model_validate(dict(values))
        except ValidationError as err:
            raise InvalidInput(f"invalid project settings: {describe(err)}") from err
        except ValueError as err:
            raise InvalidInput(f"invalid project settings: {err}") from err
        self._gate.policy.check_settings(settings)
        return settings

    async def create(self, caller: Caller, request: CreateProject) -> ProjectInfo:
        name = request.name.strip()
        if not 1 <= len(name) <= 200:
            raise InvalidInput("name must be 1 to 200 characters")
        settings = self.parse_settings(request.settings or {})
        check_agent_id(caller.agent_id)
        now = utcnow()
        project = Project(
            project_id=new_id("prj"),
            name=name,
            description=request.description,
            project_type=ProjectType(request.project_type),
            driver=self.default_driver,
            vm_id=None,
            vm_status=VMStatus.CREATING,
            owner_id=caller.agent_id,
            agents=[caller.agent_id],
            created_at=now,
            updated_at=now,
            last_activity_at=now,
            settings=settings,
        )
        async with self._journal.change() as change:
            await change.store.agents.ensure(caller.agent_id)
            await change.store.projects.insert(project)
            await change.store.members.set(
                project.project_id, caller.agent_id, AccessLevel.ADMIN, caller.agent_id
            )
            await change.record(
                project.project_id,
                caller.agent_id,
                ProjectCreated(name=project.name, project_type=project.project_type),
            )
        lifecycle = self._lifecycle
        # Under the lifecycle lock: a start or delete of the new project waits for its VM.
        async with self._runtimes.of(project.project_id).lifecycle:
            try:
                created = await lifecycle.create_vm(project)
            except DriverError as err:
                await lifecycle.set_status(
                    project, caller.agent_id, VMStatus.FAILED, f"creation failed: {err}"
                )
                raise DriverError(
                    f"project {project.project_id} was recorded but its VM could not be "
                    f"created: {err}. Retry with start_project, or remove it with delete_project"
                ) from err
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await lifecycle.set_status(
                        project,
                        caller.agent_id,
                        VMStatus.FAILED,
                        "creation was interrupted; call start_project to retry, or delete_project",
                    )
                raise
            await lifecycle.record_vm(project, created, caller.agent_id)
        info = await self.get(
            caller.doing(Operation.GET_PROJECT), GetProject(project_id=project.project_id)
        )
        # Idle time counts from the end of this call: measuring the new VM's usage above can
        # take seconds on a loaded host, longer than a short auto-sleep limit.
        self._runtimes.of(project.project_id).last_activity = time.monotonic()
        self._sleep_recheck.raise_()
        return info

    # -- reading ------------------------------------------------------------------------------

    async def list(self, caller: Caller, request: ListProjects) -> ProjectList:
        levels = await self._store.members.levels_of(caller.agent_id)
        projects = await self._store.projects.list(caller.agent_id)
        return ProjectList(projects=[ProjectInfo.of(p, levels.get(p.project_id)) for p in projects])

    async def get(self, caller: Caller, request: GetProject) -> ProjectInfo:
        grant = await self._gate.admit(caller, request.project_id)
        info = ProjectInfo.of(grant.project, grant.level)
        info.members = await self._store.members.list(grant.project_id)
        info.usage = await self._usage(grant.project)
        info.cost = await self._costs.report(grant.project_id)
        return info

    async def _storage_mode(self, driver_name: str) -> str | None:
        """The driver's word on how it keeps max_storage_gb (asked once per driver)."""
        if driver_name not in self._storage_modes:
            try:
                driver = self._lifecycle.drivers.get(driver_name)
            except ProjectVMError:
                return None
            mode = await driver.storage_mode() if isinstance(driver, ReportsStorageMode) else None
            self._storage_modes[driver_name] = mode
        return self._storage_modes[driver_name]

    async def _usage(self, project: Project) -> ResourceUsage:
        """CPU, memory and workspace disk use, measured in the VM (a stopped one is not woken)."""
        usage = ResourceUsage(max_storage_bytes=limit_bytes(project))
        usage.suspended_bytes = self._lifecycle.suspended_bytes(project) or None
        usage.storage_enforcement = await self._storage_mode(project.driver)
        if project.vm_status != VMStatus.RUNNING:
            usage.note = f"the VM is {project.vm_status}; figures appear while it runs"
            return usage
        try:
            with anyio.fail_after(USAGE_TIMEOUT_S):
                client = await self._lifecycle.running_client(project)
                if client is None:
                    usage.note = "the VM is changing state; figures appear while it runs"
                    return usage
                stats = await client.stats()
                usage.workspace_bytes = await self._storage.used_bytes(project, client, exact=True)
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

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, caller: Caller, request: StartProject) -> ProjectStatus:
        await self._gate.admit(caller, request.project_id)
        # Admitted again under the lock: the project may have changed while waiting for it.
        async with self._runtimes.of(request.project_id).lifecycle:
            grant = await self._gate.admit(caller, request.project_id)
            if grant.project.vm_status == VMStatus.RUNNING:
                return ProjectStatus(
                    project_id=grant.project_id, status=VMStatus.RUNNING, message="already running"
                )
            await self._lifecycle.boot(grant.project, caller.agent_id)
        return ProjectStatus(
            project_id=request.project_id, status=VMStatus.RUNNING, message="started"
        )

    async def stop(self, caller: Caller, request: StopProject) -> ProjectStatus:
        await self._gate.admit(caller, request.project_id)
        async with self._runtimes.of(request.project_id).lifecycle:
            grant = await self._gate.admit(caller, request.project_id)
            project, agent = grant.project, caller.agent_id
            if project.vm_status == VMStatus.STOPPED:
                return ProjectStatus(
                    project_id=project.project_id,
                    status=VMStatus.STOPPED,
                    message="already stopped",
                )
            try:
                await self._lifecycle.halt(
                    project, f"the project was stopped by {agent} while it ran"
                )
            except DriverError as err:
                await self._lifecycle.set_status(
                    project, agent, VMStatus.FAILED, f"stop failed: {err}"
                )
                raise
            await self._lifecycle.set_status(
                project, agent, VMStatus.STOPPED, f"stopped by {agent}"
            )
        return ProjectStatus(
            project_id=request.project_id, status=VMStatus.STOPPED, message="stopped"
        )

    async def delete(self, caller: Caller, request: DeleteProject) -> DeleteResult:
        project_id = request.project_id
        try:
            await self._gate.admit(caller, project_id)
        except NotFound:
            return DeleteResult(
                project_id=project_id,
                deleted=False,
                message="no such project is visible to you; nothing was deleted",
            )
        lifecycle = self._lifecycle
        async with self._runtimes.of(project_id).lifecycle:
            grant = await self._gate.admit(caller, project_id)
            project, agent = grant.project, caller.agent_id
            await lifecycle.set_status(project, agent, VMStatus.DESTROYING)
            try:
                await lifecycle.halt(project, f"the project was deleted by {agent} while it ran")
                for vm_id in await lifecycle.vms_of(project):
                    await lifecycle.driver(project).destroy_project_vm(vm_id)
            except DriverError as err:
                await lifecycle.set_status(project, agent, VMStatus.FAILED, f"delete failed: {err}")
                raise DriverError(
                    f"could not delete the VM of project {project_id}: {err}; call delete_project "
                    "again to retry"
                ) from err
            async with self._journal.change() as change:
                await change.store.projects.delete(project_id)
                await change.record(project_id, agent, ProjectDeleted())
        self._runtimes.forget(project_id)
        return DeleteResult(project_id=project_id, deleted=True, message="project and VM deleted")

    # -- settings -----------------------------------------------------------------------------

    async def update_settings(self, caller: Caller, request: UpdateProjectSettings) -> ProjectInfo:
        """Change some settings (the rest stay); recorded as an event with old and new."""
        grant = await self._gate.admit(caller, request.project_id)
        if not request.settings:
            raise InvalidInput("settings is empty; give the settings to change")
        project = grant.project
        before = project.settings.model_dump()
        after = self.parse_settings({**before, **request.settings})
        changed = {
            key: {"from": before[key], "to": value}
            for key, value in after.model_dump().items()
            if before[key] != value
        }
        async with self._journal.change() as change:
            await change.store.projects.update(project.project_id, settings=after)
            await change.record(
                project.project_id, caller.agent_id, SettingsUpdated(changed=changed)
            )
        self._runtimes.of(project.project_id).queue.set_limit(after.max_concurrent_executions)
        self._sleep_recheck.raise_()
        info = await self.get(
            caller.doing(Operation.GET_PROJECT), GetProject(project_id=project.project_id)
        )
        later = sorted(set(changed) & VM_LEVEL_SETTINGS)
        notes = []
        if later and project.vm_status == VMStatus.RUNNING:
            notes.append(
                f"{', '.join(later)} apply when the VM next starts: stop_project, then "
                "start_project (commands running now are killed by the stop)"
            )
        if "max_storage_gb" in changed:
            notes.append(
                "max_storage_gb: the server's checks use the new value now; where the workspace "
                "is a disk of that size, it grows when the VM next starts and never shrinks (a "
                "lower limit is then kept by the server's checks only)"
            )
        if notes:
            info.notes = notes
        return info
