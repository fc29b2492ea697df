"""After a restart or a crash: bring the store in line with what the drivers report.

Executions a dead server left queued or running become ``interrupted``; projects whose VM
vanished are marked failed (or stopped), and a deletion or stop that was cut short is finished.
"""

from __future__ import annotations

import logging

from server.core.lifecycle import Lifecycle
from server.core.liveness import server_is_alive
from server.domain.models import Project, VMStatus
from server.store import Store, utcnow
from vm_drivers.base import VMInfo
from vm_drivers.errors import DriverError

__all__ = ["Reconciler"]

log = logging.getLogger("projectvm.reconcile")

ORPHAN_REASON = "the server stopped while this execution was queued or running"


class Reconciler:
    def __init__(self, store: Store, lifecycle: Lifecycle) -> None:
        self._store = store
        self._lifecycle = lifecycle

    async def run(self) -> None:
        await self.interrupt_orphaned_executions()
        await self.reconcile_vms()

    async def interrupt_orphaned_executions(self) -> int:
        """Executions of server processes that are gone: never those of a live neighbour."""
        orphaned = [
            execution_id
            for execution_id, server_id in await self._store.executions.unfinished()
            if not server_is_alive(server_id)
        ]
        if orphaned:
            async with self._store.transaction():
                for execution_id in orphaned:
                    await self._store.executions.interrupt(execution_id, ORPHAN_REASON)
        return len(orphaned)

    async def reconcile_vms(self) -> None:
        projects = await self._store.projects.list()
        drivers = self._lifecycle.drivers
        for name in sorted({project.driver for project in projects}):
            try:
                found = {vm.vm_id: vm for vm in await drivers.get(name).list_vms()}
            except DriverError as err:
                log.warning("cannot reconcile projects on %s: %s", name, err)
                continue
            for project in (p for p in projects if p.driver == name):
                await self._reconcile_one(project, found)

    async def _reconcile_one(self, project: Project, found: dict[str, VMInfo]) -> None:
        vm = found.get(project.vm_id) if project.vm_id else None
        status = project.vm_status
        at = utcnow().isoformat(timespec="seconds")
        set_status = self._lifecycle.set_status
        if status == VMStatus.DESTROYING:
            await set_status(
                project,
                None,
                VMStatus.FAILED,
                f"deletion was interrupted (found at {at}); call delete_project again",
            )
        elif vm is None and status in (VMStatus.RUNNING, VMStatus.CREATING, VMStatus.STOPPED):
            what = (
                f"its VM {project.vm_id} no longer exists"
                if project.vm_id
                else "its VM was never created (creation was interrupted)"
            )
            await set_status(
                project,
                None,
                VMStatus.FAILED,
                f"{what}; start_project creates a new one (the old workspace is lost)",
            )
        elif vm is not None and status in (VMStatus.RUNNING, VMStatus.CREATING):
            if vm.status != VMStatus.RUNNING:
                await set_status(
                    project,
                    None,
                    VMStatus.STOPPED,
                    f"its VM was found {vm.status} when the server started; any call starts it",
                )
            elif status == VMStatus.CREATING:
                await set_status(project, None, VMStatus.RUNNING)
        elif vm is not None and status == VMStatus.STOPPED and vm.status == VMStatus.RUNNING:
            # The server died while stopping it: finish the job, the store is the truth.
            assert project.vm_id is not None
            try:
                await self._lifecycle.driver(project).stop_project_vm(project.vm_id)
            except DriverError as err:
                log.warning("stopping %s after a restart failed: %s", project.vm_id, err)
