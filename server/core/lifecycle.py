"""A project VM's life: create, boot, halt, destroy, wake on demand, recover from a crash.

Failures to create or start are retried with backoff before a project is marked failed with
the cause. A call that needs a stopped or sleeping project's VM starts it (reporting progress);
a VM that died or vanished under a running project is started again. Everything that changes a
VM's state holds the project's lifecycle lock and is recorded as an event. The operations that
people and agents call (start, stop, delete) are in ``server.core.projects``; the sleeper and
the reconciliation at start-up in their own modules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from guest_runtime.client import GuestClient
from guest_runtime.errors import GuestUnreachable
from server.core.activity import Activity
from server.core.caller import ProgressReporter, no_progress
from server.core.channels import ChannelPool
from server.core.journal import Change, Journal
from server.core.runtime import Runtimes
from server.domain.errors import NotFound, ProjectNotRunning
from server.domain.events import VMRecovered, VMRecreated, VMStatusChanged, VMWoken
from server.domain.models import ExecutionStatus, Project, VMStatus
from server.store import Store
from vm_drivers.base import (
    Billing,
    Metered,
    SupportsSuspend,
    VMCreationResult,
    VMDriver,
    VMSpec,
)
from vm_drivers.errors import DriverConfigError, DriverError, VMNotFound
from vm_drivers.registry import DriverSet

__all__ = ["Lifecycle", "spec_of"]

T = TypeVar("T")

log = logging.getLogger("projectvm.lifecycle")

BOOT_ATTEMPTS = 3
BOOT_BACKOFF_S = 0.5
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
    def __init__(
        self,
        store: Store,
        journal: Journal,
        drivers: DriverSet,
        channels: ChannelPool,
        runtimes: Runtimes,
        activity: Activity,
        on_running: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._journal = journal
        self.drivers = drivers
        self.channels = channels
        self._runtimes = runtimes
        self._activity = activity
        # Called when a project starts running (the sleeper recomputes when to look again).
        self._on_running = on_running
        # Why a stopped project may not be woken by a call (its budget is spent), if it may not:
        # set by the service once the budgets, which build on the lifecycle, exist.
        self.wake_refusal: Callable[[Project], Awaitable[str | None]] | None = None

    def driver(self, project: Project) -> VMDriver:
        return self.drivers.get(project.driver)

    async def set_status(
        self,
        project: Project,
        agent_id: str | None,
        status: VMStatus,
        reason: str | None = None,
        *,
        change: Change | None = None,
    ) -> None:
        """Record the VM's status (and why) with its event, in ``change`` or on its own. A VM
        that starts running on a metered driver records what it is billed as."""
        if change is None:
            async with self._journal.change() as own:
                await self.set_status(project, agent_id, status, reason, change=own)
            return
        await change.store.projects.update(
            project.project_id, vm_status=status, vm_status_reason=reason
        )
        if status == VMStatus.RUNNING:
            # Idle time counts from when the VM could first be used: a slow boot must not end
            # in a sleep before anyone had the chance to use it.
            self._runtimes.of(project.project_id).last_activity = time.monotonic()
        billing = self.billing(project) if status == VMStatus.RUNNING else None
        await change.record(
            project.project_id,
            agent_id,
            VMStatusChanged(status=status, reason=reason, billing=billing),
        )

    def billing(self, project: Project) -> Billing | None:
        driver = self.driver(project)
        return driver.billing(spec_of(project)) if isinstance(driver, Metered) else None

    async def reload(self, project_id: str) -> Project:
        project = await self._store.projects.get(project_id)
        if project is None:
            raise NotFound(f"project {project_id} was deleted meanwhile")
        return project

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

    async def record_vm(
        self, project: Project, created: VMCreationResult, agent_id: str | None
    ) -> None:
        """A new VM is the project's, running."""
        async with self._journal.change() as change:
            await change.store.projects.update(
                project.project_id,
                vm_id=created.vm_id,
                vm_status=created.status,
                vm_status_reason=None,
                vm_url=created.vm_url,
                workspace_path=created.workspace_path,
            )
            billing = self.billing(project) if created.status == VMStatus.RUNNING else None
            await change.record(
                project.project_id,
                agent_id,
                VMStatusChanged(status=created.status, vm_id=created.vm_id, billing=billing),
            )
        # Idle time counts from when the VM is ready, not from when its creation began.
        await self._activity.touch(project.project_id)

    async def boot(self, project: Project, agent_id: str | None) -> Project:
        """Start (or create, if it has none) the project's VM; record the outcome."""
        driver = self.driver(project)
        try:
            if project.vm_id is None:
                created = await self.create_vm(project)
                async with self._store.transaction():
                    await self._store.projects.update(
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
        await self._activity.touch(project.project_id)
        self._on_running()
        return await self.reload(project.project_id)

    async def _start_with_retries(self, driver: VMDriver, project: Project, vm_id: str) -> None:
        try:
            await self._retrying(
                f"starting {vm_id}", lambda: driver.start_project_vm(vm_id, spec_of(project))
            )
        except VMNotFound:
            # The VM and its workspace are gone: give the project a fresh one.
            created = await self.create_vm(project)
            async with self._journal.change() as change:
                await change.store.projects.update(
                    project.project_id,
                    vm_id=created.vm_id,
                    vm_url=created.vm_url,
                    workspace_path=created.workspace_path,
                )
                await change.record(
                    project.project_id, None, VMRecreated(vm_id=created.vm_id, lost=vm_id)
                )

    # -- stopping -----------------------------------------------------------------------------

    async def halt(self, project: Project, reason: str, *, keep_memory: bool = False) -> bool:
        """Kill queued and running commands (recorded as killed), close the channel, stop.

        With ``keep_memory``, a driver that can suspends the VM instead (its processes carry on
        at the next start); returns whether the memory was kept.
        """
        runtime = self._runtimes.of(project.project_id)
        runtime.stopping = reason
        kept = False
        try:
            runtime.withdraw_queued(ExecutionStatus.KILLED, reason)
            runtime.end_terminals(ExecutionStatus.KILLED, reason)
            await self.channels.close(project.project_id)
            if project.vm_id is not None:
                driver = self.driver(project)
                try:
                    if keep_memory and isinstance(driver, SupportsSuspend):
                        await driver.suspend_project_vm(project.vm_id)
                        kept = True
                    else:
                        await driver.stop_project_vm(project.vm_id)
                except VMNotFound:
                    pass
        finally:
            runtime.stopping = None
        return kept

    def suspended_bytes(self, project: Project) -> int:
        """What a project's VM keeps on disk while asleep with its memory."""
        driver = self.driver(project)
        if project.vm_id is None or not isinstance(driver, SupportsSuspend):
            return 0
        return driver.suspended_bytes(project.vm_id)

    async def vms_of(self, project: Project) -> list[str]:
        """The project's VM, and any its driver holds under its label (an interrupted
        creation leaves a VM whose id the store never learned)."""
        found = [project.vm_id] if project.vm_id else []
        if project.vm_id is None or project.vm_status == VMStatus.FAILED:
            for vm in await self.driver(project).list_vms():
                if vm.project_id == project.project_id and vm.vm_id not in found:
                    found.append(vm.vm_id)
        return found

    # -- the channel, waking and recovery -----------------------------------------------------

    async def ensure_awake(
        self, project: Project, report: ProgressReporter = no_progress
    ) -> Project:
        """The project with its VM running: a stopped (or sleeping) one is started first.

        A stop or sleep under way is waited for (it holds the lifecycle lock), so a call never
        reaches a VM that is being stopped.
        """
        runtime = self._runtimes.of(project.project_id)
        if (
            project.vm_status == VMStatus.RUNNING
            and project.vm_id is not None
            and runtime.stopping is None
        ):
            return project
        if project.vm_status not in (VMStatus.STOPPED, VMStatus.RUNNING):
            raise self.not_running(project)
        async with runtime.lifecycle:
            return await self._wake(await self.reload(project.project_id), report)

    @staticmethod
    def not_running(project: Project) -> ProjectNotRunning:
        reason = f" ({project.vm_status_reason})" if project.vm_status_reason else ""
        return ProjectNotRunning(
            f"project {project.project_id} is {project.vm_status}{reason}; call "
            "start_project to start it, or delete_project"
        )

    async def _wake(self, project: Project, report: ProgressReporter) -> Project:
        """Under the lifecycle lock: start a stopped project's VM (report it), else pass."""
        if project.vm_status == VMStatus.RUNNING and project.vm_id is not None:
            return project
        if project.vm_status != VMStatus.STOPPED:
            raise self.not_running(project)
        if self.wake_refusal is not None:
            refusal = await self.wake_refusal(project)
            if refusal is not None:
                raise ProjectNotRunning(refusal)
        await report(f"waking project {project.project_id}: starting its VM")
        woken = await self.boot(project, None)
        await self._journal.record(project.project_id, None, VMWoken(was=project.vm_status_reason))
        return woken

    async def client(self, project: Project, report: ProgressReporter = no_progress) -> GuestClient:
        """The live channel to the project's guest: waking the VM, or restarting a dead one."""
        project = await self.ensure_awake(project, report)
        assert project.vm_id is not None
        try:
            try:
                return await self.channels.client(
                    project.project_id, self.driver(project), project.vm_id
                )
            except GuestUnreachable as first:
                # The VM may have crashed, or been stopped or removed behind our back.
                project = await self._recover(project, str(first), report)
                assert project.vm_id is not None
                return await self.channels.client(
                    project.project_id, self.driver(project), project.vm_id
                )
        except (GuestUnreachable, DriverError) as err:
            raise GuestUnreachable(
                f"cannot reach the VM of project {project.project_id}: {err}; try again, or "
                "stop_project and start_project to restart it"
            ) from err

    async def running_client(self, project: Project) -> GuestClient | None:
        """The channel to the VM if it is running and no stop, sleep or start is under way;
        never wakes or restarts it (for looking, not working: a look is not activity)."""
        runtime = self._runtimes.of(project.project_id)
        if runtime.lifecycle.locked() or runtime.stopping is not None:
            return None
        current = await self.reload(project.project_id)
        if current.vm_status != VMStatus.RUNNING or current.vm_id is None:
            return None
        return await self.channels.client(current.project_id, self.driver(current), current.vm_id)

    async def _recover(self, project: Project, reason: str, report: ProgressReporter) -> Project:
        """Start again the VM of a project recorded as running whose VM is not."""
        async with self._runtimes.of(project.project_id).lifecycle:
            current = await self.reload(project.project_id)
            if current.vm_status != VMStatus.RUNNING or current.vm_id is None:
                return await self._wake(current, report)  # stopped or put to sleep meanwhile
            try:
                status = await self.driver(current).get_vm_status(current.vm_id)
            except VMNotFound:
                status = VMStatus.FAILED
            if status == VMStatus.RUNNING:
                return current  # the channel failed for another reason; the retry will tell
            recovered = await self.boot(current, None)
            await self._journal.record(
                current.project_id, None, VMRecovered(was=status, reason=reason)
            )
            return recovered
