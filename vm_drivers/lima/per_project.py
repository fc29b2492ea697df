"""Per-project mode: each project VM is a Lima instance of its own, made from a generated lima.yaml.

The workspace is ``/workspace`` on the instance's disk, the command user's, and the agent lives
in ``/opt/projectvm``, root's (both made by the provisioning script; the launcher checks them on
every launch, so instances made before still get there). Settings changed while the VM was
stopped are applied with ``limactl edit`` before it starts again.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio

from guest_runtime.bundle import agent_zipapp_digest
from vm_drivers.base import (
    LABEL_INSTANCE,
    LABEL_PROJECT,
    LABEL_VM,
    DriverContext,
    VMInfo,
    VMSpec,
    VMStatus,
)
from vm_drivers.config import LimaDriverConfig, LimaTemplate
from vm_drivers.lima.guest import Launch
from vm_drivers.lima.instances import BROKEN, RUNNING, STOPPED, Instances
from vm_drivers.lima.limactl import LimaInstance
from vm_drivers.lima.limayaml import (
    AGENT_DIR,
    PARAM_LABELS,
    PARAM_NETWORK,
    WORKSPACE,
    render_lima_yaml,
    resources,
)
from vm_drivers.lima.records import LimaVMRecord

__all__ = ["PerProjectPlacement", "labels_of"]


def labels_of(instance: LimaInstance) -> dict[str, str]:
    """The labels a ProjectVM instance carries in its ``param`` (empty for anyone else's)."""
    try:
        labels = json.loads((instance.param or {}).get(PARAM_LABELS, ""))
    except ValueError:
        return {}
    if not isinstance(labels, dict):
        return {}
    return {str(key): str(value) for key, value in labels.items()}


class PerProjectPlacement:
    mode = "instance"

    def __init__(
        self,
        config: LimaDriverConfig,
        context: DriverContext,
        instances: Instances,
        yaml_dir: Path,
    ) -> None:
        self.config = config
        self.context = context
        self.instances = instances
        self.yaml_dir = yaml_dir

    def template(self, spec: VMSpec) -> LimaTemplate:
        return self.config.templates.get(spec.project_type) or self.config.templates["development"]

    def yaml_path(self, record: LimaVMRecord) -> Path:
        return self.yaml_dir / f"{record.instance}.yaml"

    def owns(self, record: LimaVMRecord, instance: LimaInstance) -> bool:
        labels = labels_of(instance)
        return (
            labels.get(LABEL_VM) == record.vm_id
            and labels.get(LABEL_INSTANCE) == self.context.instance_id
        )

    async def conflict(self, record: LimaVMRecord) -> str | None:
        """Why ``record``'s instance name cannot be used (an instance that is not this VM's)."""
        instance = await self.instances.get(record.instance)
        if instance is None or self.owns(record, instance):
            return None
        return (
            f"a Lima instance named {record.instance} already exists and is not this VM's "
            f"(its labels: {labels_of(instance) or 'none'}); delete it with "
            f"`limactl delete -f {record.instance}` if it is a stray, or change instance_prefix"
        )

    async def create(self, record: LimaVMRecord) -> None:
        text = render_lima_yaml(
            record.spec,
            self.template(record.spec),
            vm_id=record.vm_id,
            labels=record.labels,
            vm_type=self.config.vm_type,
        )
        path = anyio.Path(self.yaml_path(record))
        await path.parent.mkdir(parents=True, exist_ok=True)
        await path.write_text(text)
        async with self.instances.lock(record.instance):
            await self.instances.create(record.instance, Path(path))
            await self.instances.start(record.instance, timeout_s=self.config.create_timeout_s)

    async def start(self, record: LimaVMRecord, spec: VMSpec | None) -> None:
        async with self.instances.lock(record.instance):
            instance = await self.instances.get(record.instance)
            if instance is not None and instance.status in (RUNNING, STOPPED):
                flags = self.edits(instance, spec or record.spec, record.labels)
                if flags:
                    await self.instances.stop(record.instance)
                    await self.instances.edit(record.instance, flags)
            await self.instances.start(record.instance, timeout_s=self.config.start_timeout_s)

    def edits(self, instance: LimaInstance, spec: VMSpec, labels: dict[str, str]) -> list[str]:
        """``limactl edit`` flags that bring ``instance`` to ``spec`` (disks only grow)."""
        wanted = resources(spec, self.template(spec))
        flags = []
        if instance.cpus != wanted.cpus:
            flags.append(f"--cpus={wanted.cpus}")
        if instance.memory != wanted.memory_bytes:
            flags.append(f"--memory={wanted.memory_mib / 1024:.10g}")
        if wanted.disk_bytes > instance.disk:
            flags.append(f"--disk={wanted.disk_gib:.10g}")
        params = instance.param or {}
        if params.get(PARAM_NETWORK) != spec.network:
            flags += ["--set", f".param.{PARAM_NETWORK} = {json.dumps(spec.network)}"]
        wanted_labels = json.dumps(dict(sorted(labels.items())), separators=(",", ":"))
        if params.get(PARAM_LABELS) != wanted_labels:
            flags += ["--set", f".param.{PARAM_LABELS} = {json.dumps(wanted_labels)}"]
        return flags

    async def stop(self, record: LimaVMRecord) -> None:
        async with self.instances.lock(record.instance):
            await self.instances.stop(record.instance)

    async def destroy(self, record: LimaVMRecord) -> None:
        async with self.instances.lock(record.instance):
            await self.instances.delete(record.instance)
        await anyio.Path(self.yaml_path(record)).unlink(missing_ok=True)

    def status(self, record: LimaVMRecord, instance: LimaInstance | None) -> VMStatus:
        if instance is None:
            return VMStatus.FAILED  # the instance, and the workspace on its disk, are gone
        return {
            RUNNING: VMStatus.RUNNING,
            STOPPED: VMStatus.STOPPED,
            BROKEN: VMStatus.FAILED,
        }.get(instance.status, VMStatus.CREATING)

    def launch(self, record: LimaVMRecord) -> Launch:
        return Launch(
            instance=record.instance,
            agent=f"{AGENT_DIR}/projectvm-agent-{agent_zipapp_digest()}.pyz",
            root=WORKSPACE,
            pidfile=f"{AGENT_DIR}/agent.pid",
            project_id=record.project_id,
            network=record.spec.network,  # enforced by the VM's firewall, not the launcher
        )

    def strays(self, known: set[str], instances: dict[str, LimaInstance]) -> list[VMInfo]:
        """This installation's instances that have no record (a crash, or a lost data dir)."""
        found = []
        for instance in instances.values():
            labels = labels_of(instance)
            vm_id = labels.get(LABEL_VM)
            if (
                not instance.name.startswith(self.config.instance_prefix)
                or labels.get(LABEL_INSTANCE) != self.context.instance_id
                or not vm_id
                or vm_id in known
            ):
                continue
            found.append(
                VMInfo(
                    vm_id=vm_id,
                    project_id=labels.get(LABEL_PROJECT),
                    status={RUNNING: VMStatus.RUNNING}.get(instance.status, VMStatus.STOPPED),
                    driver="lima",
                    labels=labels,
                    detail=f"Lima instance {instance.name} without a VM record",
                )
            )
        return found
