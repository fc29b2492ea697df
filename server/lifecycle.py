"""A project VM's life: create, start, stop, delete, sleep when idle, wake on demand, recover.

Failures to create or start are retried with backoff before a project is marked failed with
the cause. A call that needs a stopped or sleeping project's VM starts it (reporting progress);
a VM that died or vanished under a running project is started again. On server start the store
is reconciled with what each driver reports. Everything that changes a VM's state holds the
project's lifecycle lock and is recorded as an event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import anyio

from guest_runtime.client import GuestClient
from guest_runtime.errors import GuestUnreachable
from server import progress
from server.errors import NotFound, ProjectNotRunning
from server.models import AccessLevel, ExecutionStatus, Project, VMStatus
from server.results import DeleteResult, ProjectStatus
from server.store import utcnow
from vm_drivers.base import VMCreationResult, VMDriver, VMInfo, VMSpec
from vm_drivers.errors import DriverConfigError, DriverError, VMNotFound

if TYPE_CHECKING:
    from server.service import ProjectService, Runtime

__all__ = ["Lifecycle"]

T = TypeVar("T")

log = logging.getLogger("projectvm.lifecycle")

ACTIVITY_SAVE_EVERY_S = 30.0
BOOT_ATTEMPTS = 3
BOOT_BACKOFF_S = 0.5
SLEEP_CHECK_MAX_S = 30.0
# Errors no retry can fix: a bad configuration, a VM that does not exist.
PERMANENT = (DriverConfigError, VMNotFound)


def spec_of(project: Project) -> VMSpec:
    return VMSpec(
        project_id=project.project_id,
        name=project.name,
        project_type=project.project_type,
        cpus=project.settings.cpus,
        memory_mb=project.settings.memory_mb,
        pids_limit=project.settings.pids_limit,
        disk_gb=project.settings.max_storage_gb,
        network=project.settings.network,
    )


class Lifecycle:
    def __init__(self, service: ProjectService) -> None:
        self.service = service
        self._sleep_recheck = anyio.Event()

    def driver(self, project: Project) -> VMDriver:
        return self.service.drivers.get(project.driver)

    async def set_status(
        self, project: Project, agent_id: str | None, status: VMStatus, reason: str | None = None
    ) -> None:
        await self.service.store.update_project(
            project.project_id,
            vm_status=status,
            vm_status_reason=reason,
            event=(agent_id, "vm.status", {"status": status, "reason": reason}),
        )

    # -- creating and starting ----------------------------------------------------------------

    @staticmethod
    async def _retrying(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``, again with backoff while it fails in a way that may pass."""
        for number in range(1, BOOT_ATTEMPTS + 1):
            try:
                return await attempt()
            except PERMANENT:
                raise
            except DriverError as err:
                if number == BOOT_ATTEMPTS:
                    raise
                log.warning("%s failed (%s); retrying", what, err)
                await anyio.sleep(BOOT_BACKOFF_S * 2 ** (number - 1))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def create_vm(self, project: Project) -> VMCreationResult:
        """Create the project's VM, retrying transient failures with backoff."""
        driver = self.driver(project)
        return await self._retrying(
            f"creating the VM of {project.project_id}",
            lambda: driver.create_project_vm(spec_of(project)),
        )

    async def boot(self, project: Project, agent_id: str | None) -> Project:
        """Start (or create, if it has none) the project's VM; record the outcome."""
        driver = self.driver(project)
        try:
            if project.vm_id is None:
                created = await self.create_vm(project)
                await self.service.store.update_project(
                    project.project_id,
                    vm_id=created.vm_id,
                    vm_url=created.vm_url,
                    workspace_path=created.workspace_path,
                )
            else:
                await self._start_with_retries(driver, project, project.vm_id)
        except DriverError as err:
            await self.set_status(project, agent_id, VMStatus.FAILED, f"start failed: {err}")
            raise DriverError(
                f"could not start the VM of project {project.project_id}: {err}; the project "
                "is marked failed, call start_project to try again"
            ) from err
        await self.set_status(project, agent_id, VMStatus.RUNNING)
        await self.touch(project.project_id)
        refreshed = await self.service.store.get_project(project.project_id)
        if refreshed is None:
            raise NotFound(f"project {project.project_id} was deleted meanwhile")
        return refreshed

    async def _start_with_retries(self, driver: VMDriver, project: Project, vm_id: str) -> None:
        try:
            await self._retrying(
                f"starting {vm_id}", lambda: driver.start_project_vm(vm_id, spec_of(project))
            )
        except VMNotFound:
            # The VM and its workspace are gone: give the project a fresh one.
            created = await self.create_vm(project)
            await self.service.store.update_project(
                project.project_id,
                vm_id=created.vm_id,
                vm_url=created.vm_url,
                workspace_path=created.workspace_path,
                event=(None, "vm.recreated", {"vm_id": created.vm_id, "lost": vm_id}),
            )

    async def start(self, agent_id: str, project_id: str) -> ProjectStatus:
        await self.service.authorize(agent_id, project_id, AccessLevel.ADMIN)
        async with self.service.runtime_of(project_id).lifecycle:
            project, _ = await self.service.authorize(agent_id, project_id, AccessLevel.ADMIN)
            if project.vm_status == VMStatus.RUNNING:
                return ProjectStatus(
                    project_id=project_id, status=VMStatus.RUNNING, message="already running"
                )
            await self.boot(project, agent_id)
        self._sleep_recheck.set()
        return ProjectStatus(project_id=project_id, status=VMStatus.RUNNING, message="started")

    # -- stopping and deleting ----------------------------------------------------------------

    async def _halt(self, project: Project, reason: str) -> None:
        """Kill queued and running commands (recorded as killed), close the channel, stop."""
        runtime = self.service.runtime_of(project.project_id)
        runtime.stopping = reason
        try:
            await self.service.executions.abort_all(
                project.project_id, ExecutionStatus.KILLED, reason
            )
            await self.service.channels.close(project.project_id)
            if project.vm_id is not None:
                try:
                    await self.driver(project).stop_project_vm(project.vm_id)
                except VMNotFound:
                    pass
        finally:
            runtime.stopping = None

    async def stop(self, agent_id: str, project_id: str) -> ProjectStatus:
        await self.service.authorize(agent_id, project_id, AccessLevel.ADMIN)
        async with self.service.runtime_of(project_id).lifecycle:
            project, _ = await self.service.authorize(agent_id, project_id, AccessLevel.ADMIN)
            if project.vm_status == VMStatus.STOPPED:
                return ProjectStatus(
                    project_id=project_id, status=VMStatus.STOPPED, message="already stopped"
                )
            try:
                await self._halt(
                    project, f"the project was stopped by {agent_id} while the command ran"
                )
            except DriverError as err:
                await self.set_status(project, agent_id, VMStatus.FAILED, f"stop failed: {err}")
                raise
            await self.set_status(project, agent_id, VMStatus.STOPPED, f"stopped by {agent_id}")
        return ProjectStatus(project_id=project_id, status=VMStatus.STOPPED, message="stopped")

    async def delete(self, agent_id: str, project_id: str) -> DeleteResult:
        try:
            await self.service.authorize(agent_id, project_id, AccessLevel.ADMIN)
        except NotFound:
            return DeleteResult(
                project_id=project_id,
                deleted=False,
                message="no such project is visible to you; nothing was deleted",
            )
        async with self.service.runtime_of(project_id).lifecycle:
            project, _ = await self.service.authorize(agent_id, project_id, AccessLevel.ADMIN)
            await self.set_status(project, agent_id, VMStatus.DESTROYING)
            try:
                await self._halt(
                    project, f"the project was deleted by {agent_id} while the command ran"
                )
                for vm_id in await self._vms_of(project):
                    await self.driver(project).destroy_project_vm(vm_id)
            except DriverError as err:
                await self.set_status(project, agent_id, VMStatus.FAILED, f"delete failed: {err}")
                raise DriverError(
                    f"could not delete the VM of project {project_id}: {err}; call delete_project "
                    "again to retry"
                ) from err
            await self.service.store.delete_project(project_id, agent_id)
        self.service.runtimes.pop(project_id, None)
        return DeleteResult(project_id=project_id, deleted=True, message="project and VM deleted")

    async def _vms_of(self, project: Project) -> list[str]:
        """The project's VM, and any its driver holds under its label (an interrupted
        creation leaves a VM whose id the store never learned)."""
        found = [project.vm_id] if project.vm_id else []
        if project.vm_id is None or project.vm_status == VMStatus.FAILED:
            for vm in await self.driver(project).list_vms():
                if vm.project_id == project.project_id and vm.vm_id not in found:
                    found.append(vm.vm_id)
        return found

    # -- the channel, waking and recovery -----------------------------------------------------

    async def ensure_awake(self, project: Project) -> Project:
        """The project with its VM running: a stopped (or sleeping) one is started first.

        A stop or sleep under way is waited for (it holds the lifecycle lock), so a call never
        reaches a VM that is being stopped.
        """
        runtime = self.service.runtime_of(project.project_id)
        if (
            project.vm_status == VMStatus.RUNNING
            and project.vm_id is not None
            and runtime.stopping is None
        ):
            return project
        if project.vm_status not in (VMStatus.STOPPED, VMStatus.RUNNING):
            raise self._not_running(project)
        async with runtime.lifecycle:
            current = await self.service.store.get_project(project.project_id)
            if current is None:
                raise NotFound(f"project {project.project_id} was deleted meanwhile")
            return await self._wake(current)

    @staticmethod
    def _not_running(project: Project) -> ProjectNotRunning:
        reason = f" ({project.vm_status_reason})" if project.vm_status_reason else ""
        return ProjectNotRunning(
            f"project {project.project_id} is {project.vm_status}{reason}; call "
            "start_project to start it, or delete_project"
        )

    async def _wake(self, project: Project) -> Project:
        """Under the lifecycle lock: start a stopped project's VM (report it), else pass."""
        if project.vm_status == VMStatus.RUNNING and project.vm_id is not None:
            return project
        if project.vm_status != VMStatus.STOPPED:
            raise self._not_running(project)
        await progress.report(f"waking project {project.project_id}: starting its VM")
        woken = await self.boot(project, None)
        await self.service.store.append_event(
            project.project_id, None, "vm.woken", {"was": project.vm_status_reason}
        )
        self._sleep_recheck.set()
        return woken

    async def client(self, project: Project) -> GuestClient:
        """The live channel to the project's guest: waking the VM, or restarting a dead one."""
        project = await self.ensure_awake(project)
        assert project.vm_id is not None
        channels = self.service.channels
        try:
            try:
                return await channels.client(
                    project.project_id, self.driver(project), project.vm_id
                )
            except GuestUnreachable as first:
                # The VM may have crashed, or been stopped or removed behind our back.
                project = await self._recover(project, str(first))
                assert project.vm_id is not None
                return await channels.client(
                    project.project_id, self.driver(project), project.vm_id
                )
        except (GuestUnreachable, DriverError) as err:
            raise GuestUnreachable(
                f"cannot reach the VM of project {project.project_id}: {err}; try again, or "
                "stop_project and start_project to restart it"
            ) from err

    async def _recover(self, project: Project, reason: str) -> Project:
        """Start again the VM of a project recorded as running whose VM is not."""
        async with self.service.runtime_of(project.project_id).lifecycle:
            current = await self.service.store.get_project(project.project_id)
            if current is None:
                raise NotFound(f"project {project.project_id} was deleted meanwhile")
            if current.vm_status != VMStatus.RUNNING or current.vm_id is None:
                return await self._wake(current)  # stopped or put to sleep meanwhile
            try:
                status = await self.driver(current).get_vm_status(current.vm_id)
            except VMNotFound:
                status = VMStatus.FAILED
            if status == VMStatus.RUNNING:
                return current  # the channel failed for another reason; the retry will tell
            recovered = await self.boot(current, None)
            await self.service.store.append_event(
                current.project_id, None, "vm.recovered", {"was": status, "reason": reason}
            )
            return recovered

    # -- idle projects go to sleep ------------------------------------------------------------

    async def touch(self, project_id: str) -> None:
        """Note activity; persisted (at most every half minute) for other server processes."""
        runtime = self.service.runtime_of(project_id)
        now = time.monotonic()
        runtime.last_activity = now
        if now - runtime.activity_saved_at >= ACTIVITY_SAVE_EVERY_S:
            runtime.activity_saved_at = now
            await self.service.store.touch_project(project_id)

    async def run_sleeper(self) -> None:
        """Stop running projects idle longer than their auto_sleep_minutes, until cancelled."""
        while True:
            try:
                wait = await self._sleep_idle_projects()
            except Exception:  # never let a bad round end the sleeper (or the service)
                log.exception("checking for idle projects failed; trying again later")
                wait = SLEEP_CHECK_MAX_S
            with anyio.move_on_after(wait):
                await self._sleep_recheck.wait()
            self._sleep_recheck = anyio.Event()

    @staticmethod
    def _last_activity(project: Project, runtime: Runtime, now: float) -> float:
        """The latest activity seen by this process or, through the store, by any other."""
        if project.last_activity_at is None:
            return runtime.last_activity
        ago = (utcnow() - project.last_activity_at).total_seconds()
        return max(runtime.last_activity, now - ago)

    def recheck_sleep(self) -> None:
        """Settings changed or a project started: recompute when the next one is due."""
        self._sleep_recheck.set()

    async def _sleep_idle_projects(self) -> float:
        """Put idle projects to sleep; return how long until the next one could be due."""
        now = time.monotonic()
        next_due = SLEEP_CHECK_MAX_S
        for project in await self.service.store.list_projects():
            minutes = project.settings.auto_sleep_minutes
            if project.vm_status != VMStatus.RUNNING or minutes <= 0:
                continue
            runtime = self.service.runtime_of(project.project_id)
            if runtime.live:
                runtime.last_activity = now  # a running command is activity
            idle_for = now - self._last_activity(project, runtime, now)
            due_in = minutes * 60 - idle_for
            if due_in > 0:
                next_due = min(next_due, due_in)
                continue
            try:
                await self._sleep(project, minutes)
            except (DriverError, ProjectNotRunning) as err:
                log.warning("putting %s to sleep failed: %s", project.project_id, err)
        return max(next_due, 0.01)

    async def _sleep(self, project: Project, minutes: float) -> None:
        runtime = self.service.runtime_of(project.project_id)
        async with runtime.lifecycle:
            current = await self.service.store.get_project(project.project_id)
            now = time.monotonic()
            idle_for = now - (self._last_activity(current, runtime, now) if current else now)
            if (
                current is None
                or current.vm_status != VMStatus.RUNNING
                or runtime.live
                or idle_for < minutes * 60
            ):
                return
            await self._halt(current, "the project went to sleep")
            await self.set_status(
                current,
                None,
                VMStatus.STOPPED,
                f"asleep after {minutes:g} min without activity; any call wakes it",
            )
            await self.service.store.append_event(
                current.project_id, None, "vm.slept", {"idle_s": round(idle_for, 1)}
            )

    # -- reconciliation at start --------------------------------------------------------------

    async def reconcile(self) -> None:
        """Bring the store in line with what the drivers report, after a restart or crash."""
        projects = await self.service.store.list_projects()
        for name in sorted({project.driver for project in projects}):
            try:
                found = {vm.vm_id: vm for vm in await self.service.drivers.get(name).list_vms()}
            except DriverError as err:
                log.warning("cannot reconcile projects on %s: %s", name, err)
                continue
            for project in (p for p in projects if p.driver == name):
                await self._reconcile_one(project, found)

    async def _reconcile_one(self, project: Project, found: dict[str, VMInfo]) -> None:
        vm = found.get(project.vm_id) if project.vm_id else None
        status = project.vm_status
        at = utcnow().isoformat(timespec="seconds")
        if status == VMStatus.DESTROYING:
            await self.set_status(
                project,
                None,
                VMStatus.FAILED,
                f"deletion was interrupted (found at {at}); call delete_project again",
            )
        elif vm is None and status in (VMStatus.RUNNING, VMStatus.CREATING, VMStatus.STOPPED):
            what = (
                f"its VM {project.vm_id} no longer exists"
                if project.vm_id
                else ("its VM was never created (creation was interrupted)")
            )
            await self.set_status(
                project,
                None,
                VMStatus.FAILED,
                f"{what}; start_project creates a new one (the old workspace is lost)",
            )
        elif vm is not None and status in (VMStatus.RUNNING, VMStatus.CREATING):
            if vm.status != VMStatus.RUNNING:
                await self.set_status(
                    project,
                    None,
                    VMStatus.STOPPED,
                    f"its VM was found {vm.status} when the server started; any call starts it",
                )
            elif status == VMStatus.CREATING:
                await self.set_status(project, None, VMStatus.RUNNING)
        elif vm is not None and status == VMStatus.STOPPED and vm.status == VMStatus.RUNNING:
            # The server died while stopping it: finish the job, the store is the truth.
            assert project.vm_id is not None
            try:
                await self.driver(project).stop_project_vm(project.vm_id)
            except DriverError as err:
                log.warning("stopping %s after a restart failed: %s", project.vm_id, err)
