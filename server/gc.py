"""Garbage collection: VMs, volumes and workspaces this installation made for no project.

A test killed halfway, a crash between creating a VM and recording it, a project deleted while
its engine was down: each can leave a labelled VM behind. Only resources carrying this
installation's ``projectvm.instance`` label are candidates; other installations' are listed as
foreign and never touched.
"""

from __future__ import annotations

from pydantic import BaseModel

from server.store import Store
from vm_drivers.base import LABEL_INSTANCE, VMInfo
from vm_drivers.errors import DriverError
from vm_drivers.registry import DriverSet, available_driver_names

__all__ = ["GcReport", "collect_garbage"]


class GcReport(BaseModel):
    strays: list[VMInfo]
    foreign: list[VMInfo]
    removed: list[str]
    skipped_drivers: dict[str, str]


async def collect_garbage(store: Store, drivers: DriverSet, *, remove: bool) -> GcReport:
    """Find (and with ``remove``, destroy) VMs of this installation that no project owns."""
    # A VM counts as owned when its project exists, even before the project records its
    # vm_id (a creation in progress must never be collected under it).
    projects = {project.project_id: project.driver for project in await store.list_projects()}
    ours = drivers.context.instance_id
    report = GcReport(strays=[], foreign=[], removed=[], skipped_drivers={})
    for name in available_driver_names():
        try:
            found = await drivers.get(name).list_vms()
        except DriverError as err:
            report.skipped_drivers[name] = str(err)
            continue
        for vm in found:
            if vm.labels.get(LABEL_INSTANCE) != ours:
                report.foreign.append(vm)
            elif projects.get(vm.project_id or "") != name:
                report.strays.append(vm)
    if remove:
        for vm in report.strays:
            await drivers.get(vm.driver).destroy_project_vm(vm.vm_id)
            report.removed.append(vm.vm_id)
    return report
