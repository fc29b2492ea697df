"""Shared mode: every project is a sandbox inside one existing Lima instance (``LIMA_INSTANCE``).

The instance is the user's: the driver starts it when it is stopped, but never creates, stops or
deletes it. A project is a directory in it, ``<shared_root>/vms/<vm id>/`` holding
``workspace/`` and ``labels.json``; "stopping" a project ends its agent, "destroying" it removes
the directory. The agent is confined with bubblewrap when the instance has it (see
``guest_launcher``): the project's directory is its ``/workspace``, other projects and the
user's home are hidden, and ``network: none`` gives it no network at all. The sandbox runs as
root (through ``sudo -n``) and the agent in it runs every command as ``COMMAND_USER``, an
unprivileged user of the instance without sudo that the launcher makes on first use; the
agent's code and its directory (``<shared_root>/agents``) are root's. Without bubblewrap
(``shared_sandbox: none``, or ``auto`` on an instance without it) file calls still stay inside the
workspace, but commands see the whole instance and its network (as that user).
"""

from __future__ import annotations

import json

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
from vm_drivers.config import LimaDriverConfig
from vm_drivers.errors import DriverUnavailable, VMOperationFailed
from vm_drivers.lima.guest import COMMAND_USER, Guest, Launch
from vm_drivers.lima.instances import BROKEN, RUNNING, Instances
from vm_drivers.lima.limactl import LimaInstance
from vm_drivers.lima.records import LimaVMRecord

__all__ = ["SharedPlacement"]

# Ends a project's agent (its pid file names it; a recycled pid is left alone). The agent is
# root's, so is the signal; so is the removal of a workspace, whose files are the command user's.
_END_AGENT = (
    'd=$(expand "$1"); pid=$(cat "$d/agent.pid" 2>/dev/null || true); '
    'if [ -n "$pid" ] && tr "\\0" " " < "/proc/$pid/cmdline" 2>/dev/null '
    '| grep -q projectvm-agent; then asroot kill -TERM "$pid"; fi; '
)


# What readiness needs to know: the tools there, whether Lima's user can become root, and
# whether the instance has more than one uid (a user to run commands as, apart from the agent).
_READINESS = (
    "for c in python3 bwrap; do command -v $c >/dev/null 2>&1 && echo $c; done; "
    '{ [ "$(id -u)" = 0 ] || sudo -n true; } >/dev/null 2>&1 && echo root; '
    "uids=0; while read -r inside outside count; do uids=$((uids + count)); done "
    '< /proc/self/uid_map; [ "$uids" -gt 1 ] || echo one-uid; true'
)


class SharedPlacement:
    mode = "shared"

    def __init__(
        self,
        config: LimaDriverConfig,
        context: DriverContext,
        instances: Instances,
        guest: Guest,
    ) -> None:
        self.config = config
        self.context = context
        self.instances = instances
        self.guest = guest

    @property
    def root(self) -> str:
        return self.config.shared_root.rstrip("/")

    def directory(self, vm_id: str) -> str:
        return f"{self.root}/vms/{vm_id}"

    async def ensure_running(self, name: str) -> None:
        async with self.instances.lock(name):
            instance = await self.instances.get(name)
            if instance is None:
                raise DriverUnavailable(
                    "lima",
                    f"the shared Lima instance {name} (LIMA_INSTANCE) does not exist",
                    f"create it (`limactl start --name={name} template:debian-12`), or unset "
                    "LIMA_INSTANCE for one instance per project",
                )
            await self.instances.start(name, timeout_s=self.config.start_timeout_s)

    async def readiness(self, name: str) -> tuple[bool, str, dict[str, str]]:
        """Whether projects can run in instance ``name``: usable, why, and what was found."""
        instance = await self.instances.get(name)
        if instance is None:
            return (
                False,
                f"the shared Lima instance {name} (LIMA_INSTANCE) does not exist; create it "
                f"(`limactl start --name={name} template:debian-12`) or unset LIMA_INSTANCE",
                {},
            )
        if instance.status != RUNNING:
            return True, f"shared Lima instance {name} is {instance.status}; it starts on use", {}
        found = await self.guest.run(name, _READINESS, action=f"checking Lima instance {name}")
        tools = set(found.split())
        if "root" not in tools:
            return (
                False,
                f"Lima's user in instance {name} cannot become root (`sudo -n true` fails), "
                "which the guest agent needs to keep commands away from it; give it "
                "passwordless sudo again (Lima's default)",
                {},
            )
        confinement = "bubblewrap" if "bwrap" in tools else "none (no bubblewrap in the instance)"
        if self.config.shared_sandbox == "none":
            confinement = "none (shared_sandbox: none)"
        details = {"confinement": confinement}
        install = f"`limactl shell {name} sudo apt-get install -y"
        if "python3" not in tools:
            return (
                False,
                f"Lima instance {name} has no python3, which the guest agent needs; install it "
                f"({install} python3`)",
                details,
            )
        if self.config.shared_sandbox == "bwrap" and "bwrap" not in tools:
            return (
                False,
                f"shared_sandbox is 'bwrap' but Lima instance {name} has no bubblewrap; install "
                f"it ({install} bubblewrap`)",
                details,
            )
        if "one-uid" in tools:
            details["commands"] = (
                f"shared with the agent: Lima instance {name} maps a single uid, so commands "
                "cannot run as another user and could reach the agent's channel and code"
            )
            return (
                True,
                f"shared Lima instance {name} runs; projects are confined by {confinement}; "
                f"WARNING: {details['commands']}",
                details,
            )
        details["commands"] = f"run as {COMMAND_USER} (no sudo), the agent as root"
        return (
            True,
            f"shared Lima instance {name} runs; projects are confined by {confinement}",
            details,
        )

    async def conflict(self, record: LimaVMRecord) -> str | None:
        return None  # the directory is named by the VM id, which is this VM's alone

    async def create(self, record: LimaVMRecord) -> None:
        await self.ensure_running(record.instance)
        labels = json.dumps(dict(sorted(record.labels.items())))
        await self.guest.run(
            record.instance,
            'd=$(expand "$1"); mkdir -p "$d/workspace" && printf "%s\\n" "$2" > "$d/labels.json"',
            self.directory(record.vm_id),
            labels,
            action=f"making the workspace of {record.vm_id} in Lima instance {record.instance}",
        )

    async def start(self, record: LimaVMRecord, spec: VMSpec | None) -> None:
        await self.ensure_running(record.instance)
        await self.guest.run(
            record.instance,
            'test -d "$(expand "$1")/workspace"',
            self.directory(record.vm_id),
            action=f"finding the workspace of {record.vm_id} in Lima instance {record.instance}",
        )

    async def stop(self, record: LimaVMRecord) -> None:
        instance = await self.instances.get(record.instance)
        if instance is not None and instance.status == RUNNING:
            await self.guest.run(
                record.instance,
                _END_AGENT,
                self.directory(record.vm_id),
                action=f"ending the agent of {record.vm_id}",
            )

    async def destroy(self, record: LimaVMRecord) -> None:
        instance = await self.instances.get(record.instance)
        if instance is None:
            return  # the instance, and every workspace in it, is gone already
        if instance.status != RUNNING:
            raise VMOperationFailed(
                f"cannot remove the workspace of {record.vm_id}: the shared Lima instance "
                f"{record.instance} is {instance.status}; start it (`limactl start "
                f"{record.instance}`) and destroy the VM again"
            )
        await self.guest.run(
            record.instance,
            _END_AGENT + 'asroot rm -rf "$d"',
            self.directory(record.vm_id),
            action=f"removing the workspace of {record.vm_id}",
        )

    def status(self, record: LimaVMRecord, instance: LimaInstance | None) -> VMStatus:
        if instance is None or instance.status == BROKEN:
            return VMStatus.FAILED
        if instance.status == RUNNING and record.state == VMStatus.RUNNING:
            return VMStatus.RUNNING
        if record.state == VMStatus.CREATING:
            return VMStatus.CREATING
        return VMStatus.STOPPED

    def launch(self, record: LimaVMRecord) -> Launch:
        directory = self.directory(record.vm_id)
        return Launch(
            instance=record.instance,
            agent=f"{self.root}/agents/projectvm-agent-{agent_zipapp_digest()}.pyz",
            root=f"{directory}/workspace",
            pidfile=f"{directory}/agent.pid",
            project_id=record.project_id,
            sandbox=self.config.shared_sandbox,
            network=record.spec.network,
            hide=[self.root],
        )

    async def strays(self, known: set[str], instances: dict[str, LimaInstance]) -> list[VMInfo]:
        """Project directories of this installation that have no record."""
        name = self.config.shared_instance
        if name is None or name not in instances or instances[name].status != RUNNING:
            return []
        output = await self.guest.run(
            name,
            'for f in "$(expand "$1")"/vms/*/labels.json; do [ -f "$f" ] && cat "$f"; done; true',
            self.root,
            action=f"listing the project directories in Lima instance {name}",
        )
        found = []
        for line in output.splitlines():
            try:
                labels = json.loads(line)
            except ValueError:
                continue
            if not isinstance(labels, dict):
                continue
            vm_id = labels.get(LABEL_VM)
            if labels.get(LABEL_INSTANCE) != self.context.instance_id or not vm_id:
                continue
            if vm_id in known:
                continue
            found.append(
                VMInfo(
                    vm_id=str(vm_id),
                    project_id=labels.get(LABEL_PROJECT),
                    status=VMStatus.STOPPED,
                    driver="lima",
                    labels={str(k): str(v) for k, v in labels.items()},
                    detail=f"{self.directory(str(vm_id))} in Lima instance {name} without a record",
                )
            )
        return found
