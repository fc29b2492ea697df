"""Garbage collection: VMs, volumes and workspaces no project owns.

A test killed halfway, a crash between creating a VM and recording it, a project deleted while
its engine was down: each can leave a labelled VM behind. Only resources carrying this
installation's ``projectvm.instance`` label are candidates by default; other installations'
are listed as foreign and never touched. When a data directory was lost, its installation id
is gone with it: ``all_installations`` lists every installation's resources (grouped by id,
with when each was made), and ``instance`` names one whose resources are all removed.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from server.domain.errors import InvalidInput
from server.store import Store
from vm_drivers.base import LABEL_INSTANCE, VMInfo
from vm_drivers.errors import DriverError
from vm_drivers.registry import DriverSet, available_driver_names

__all__ = ["GcReport", "Installation", "collect_garbage"]


class Installation(BaseModel):
    instance_id: str
    this_one: bool
    vms: list[VMInfo]
    oldest: datetime | None = Field(description="when its oldest resource was made")
    newest: datetime | None = Field(description="when its newest resource was made")


class GcReport(BaseModel):
    instance_id: str = Field(description="this installation's id")
    strays: list[VMInfo]
    foreign: list[VMInfo]
    owned: list[VMInfo] = Field(default_factory=list, description="VMs of our projects")
    removed: list[str]
    skipped_drivers: dict[str, str]
    installations: list[Installation] | None = None


async def collect_garbage(
    store: Store,
    drivers: DriverSet,
    *,
    remove: bool,
    all_installations: bool = False,
    instance: str | None = None,
) -> GcReport:
    """Find (and with ``remove``, destroy) VMs no project owns.

    With ``instance`` (another installation's id), its resources are the candidates: all of
    them, since the projects they belonged to are not known here.
    """
    ours = drivers.context.instance_id
    if instance == ours:
        instance = None  # our own: only strays, as always
    # A VM counts as owned when its project exists, even before the project records its
    # vm_id (a creation in progress must never be collected under it).
    projects = {project.project_id: project.driver for project in await store.projects.list()}
    report = GcReport(instance_id=ours, strays=[], foreign=[], removed=[], skipped_drivers={})
    for name in available_driver_names():
        try:
            found = await drivers.get(name).list_vms()
        except DriverError as err:
            report.skipped_drivers[name] = str(err)
            continue
        for vm in found:
            owner = vm.labels.get(LABEL_INSTANCE)
            if instance is not None:
                if owner == instance:
                    report.strays.append(vm)
                else:
                    report.foreign.append(vm)
            elif owner != ours:
                report.foreign.append(vm)
            elif projects.get(vm.project_id or "") != name:
                report.strays.append(vm)
            else:
                report.owned.append(vm)
    if instance is not None and not report.strays and remove:
        raise InvalidInput(
            f"no resources of installation {instance!r} were found; "
            "`projectvm gc --all-installations` lists the installations there are"
        )
    if all_installations or instance is not None:
        report.installations = _group(ours, report)
    if remove:
        for vm in report.strays:
            await drivers.get(vm.driver).destroy_project_vm(vm.vm_id)
            report.removed.append(vm.vm_id)
    return report


def _group(ours: str, report: GcReport) -> list[Installation]:
    by_instance: dict[str, list[VMInfo]] = {}
    for vm in [*report.strays, *report.foreign, *report.owned]:
        by_instance.setdefault(vm.labels.get(LABEL_INSTANCE) or "(unlabelled)", []).append(vm)
    groups = []
    for instance_id, vms in sorted(by_instance.items()):
        times = sorted(vm.created_at for vm in vms if vm.created_at is not None)
        groups.append(
            Installation(
                instance_id=instance_id,
                this_one=instance_id == ours,
                vms=sorted(vms, key=lambda vm: vm.vm_id),
                oldest=times[0] if times else None,
                newest=times[-1] if times else None,
            )
        )
    return groups
