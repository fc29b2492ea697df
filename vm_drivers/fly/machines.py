"""What a ProjectVM Machine is made of: its config, its metadata, and how its state reads.

Pure functions, no API calls: the driver sends what these build and reads what they parse.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from guest_runtime.bundle import agent_zipapp
from vm_drivers.base import DriverContext, VMSpec, VMStatus
from vm_drivers.config import FlyDriverConfig
from vm_drivers.fly.guest import guest_for
from vm_drivers.fly.models import (
    Machine,
    MachineConfig,
    MachineFile,
    MachineInit,
    MachineMount,
    MachinePort,
    MachineRestart,
    MachineService,
    StopConfig,
    Volume,
)
from vm_drivers.fly.state import FlyVMRecord

__all__ = [
    "AGENT_PATH",
    "GONE_STATES",
    "MACHINE_NAME",
    "META_INSTANCE",
    "META_LABELS",
    "META_PROJECT",
    "META_VM",
    "TOKEN_SECRET",
    "VOLUME_NAME",
    "WORKSPACE",
    "config_differences",
    "events_summary",
    "guest_wish",
    "machine_config",
    "machine_status",
    "metadata_for",
]

WORKSPACE = "/workspace"
AGENT_PATH = "/.projectvm/agent.pyz"
TOKEN_SECRET = "PROJECTVM_AGENT_TOKEN"
MACHINE_NAME = "workspace"
VOLUME_NAME = "workspace"
# Metadata keys use underscores: Fly's own keys do, the list filter is metadata.<key>=, and
# metadata also becomes DNS labels. The exact labels (dots and all) travel as JSON.
META_PROJECT = "projectvm_project"
META_VM = "projectvm_vm"
META_INSTANCE = "projectvm_instance"
META_LAUNCH = "projectvm_launch_id"
META_LABELS = "projectvm_labels"
GONE_STATES = {"destroying", "destroyed", "replaced", "migrated"}
_STATUS = {
    "created": VMStatus.STOPPED,  # made but never booted: a start boots it
    "creating": VMStatus.CREATING,
    "starting": VMStatus.CREATING,
    "restarting": VMStatus.CREATING,
    "replacing": VMStatus.CREATING,
    "updating": VMStatus.CREATING,
    "started": VMStatus.RUNNING,
    "stopping": VMStatus.STOPPED,
    "stopped": VMStatus.STOPPED,
    "suspending": VMStatus.STOPPED,
    "suspended": VMStatus.STOPPED,
    "failed": VMStatus.FAILED,
    "launch_failed": VMStatus.FAILED,
    "destroying": VMStatus.DESTROYING,
    "destroyed": VMStatus.DESTROYING,
}


def machine_status(state: str) -> VMStatus:
    """ProjectVM's view of a Fly Machine state (unknown states count as failed)."""
    return _STATUS.get(state, VMStatus.FAILED)


def events_summary(machine: Machine) -> str:
    """What the latest events say (an exit code, a launch error), for error messages."""
    parts = []
    for event in machine.events[:3]:  # newest first, as Fly lists them
        detail = ""
        request = event.request if isinstance(event.request, dict) else {}
        exit_event = request.get("exit_event")
        if isinstance(exit_event, dict):
            detail = f" exit code {exit_event.get('exit_code')}"
            if exit_event.get("oom_killed"):
                detail += " (out of memory)"
        elif request.get("error"):
            detail = f" {request['error']}"
        parts.append(f"{event.type} {event.status}{detail}".strip())
    return "; ".join(parts) or "no events"


def metadata_for(
    vm_id: str, spec: VMSpec, launch_id: str, context: DriverContext
) -> dict[str, str]:
    """The Machine's metadata: filterable keys, and the exact labels as JSON."""
    labels = {**spec.labels, **context.labels(spec.project_id, vm_id)}
    return {
        META_PROJECT: spec.project_id,
        META_VM: vm_id,
        META_INSTANCE: context.instance_id,
        META_LAUNCH: launch_id,
        META_LABELS: json.dumps(labels, sort_keys=True, separators=(",", ":")),
    }


def guest_wish(spec: VMSpec, config: FlyDriverConfig) -> tuple[float, int]:
    """CPUs and memory the project asks for, or the driver's defaults."""
    return spec.cpus or config.cpus, spec.memory_mb or config.memory_mb


def machine_config(
    record: FlyVMRecord, volume: Volume, config: FlyDriverConfig, context: DriverContext
) -> MachineConfig:
    """The whole config of a VM's Machine (an update sends all of it again)."""
    spec = record.spec
    cpus, memory_mb = guest_wish(spec, config)
    port = config.agent_port
    agent = base64.b64encode(agent_zipapp()).decode()
    return MachineConfig(
        image=spec.image or config.image,
        guest=guest_for(cpus, memory_mb, config.cpu_kind),
        env={"PROJECTVM_PROJECT_ID": spec.project_id, "HOME": WORKSPACE, "LANG": "C.UTF-8"},
        init=MachineInit(
            exec=[
                "python3",
                AGENT_PATH,
                "--root",
                WORKSPACE,
                "--http",
                f"0.0.0.0:{port}",
                "--token-env",
                TOKEN_SECRET,
                # The agent stays root; commands run as uid 1000, off its channel and code.
                "--run-as",
                "1000:1000",
            ]
        ),
        files=[MachineFile(guest_path=AGENT_PATH, raw_value=agent)],
        mounts=[MachineMount(volume=volume.id, path=WORKSPACE)],
        services=[
            MachineService(
                internal_port=port, ports=[MachinePort(port=443, handlers=["tls", "http"])]
            )
        ],
        restart=MachineRestart(policy="on-failure", max_retries=5),
        stop_config=StopConfig(signal="SIGTERM", timeout=f"{config.stop_timeout_s}s"),
        metadata=metadata_for(record.vm_id, spec, record.launch_id, context),
    )


def config_differences(current: dict[str, Any], desired: MachineConfig) -> list[str]:
    """What of ours differs in a Machine's config (fields Fly adds are not compared)."""
    wanted = desired.body()
    changed = []
    if current.get("image") != wanted["image"]:
        changed.append("image")
    guest = current.get("guest") or {}
    if any(guest.get(key) != value for key, value in wanted["guest"].items()):
        changed.append("size")
    files = {f.get("guest_path"): f.get("raw_value") for f in current.get("files") or []}
    if any(files.get(f["guest_path"]) != f["raw_value"] for f in wanted["files"]):
        changed.append("agent")
    metadata = current.get("metadata") or {}
    if any(metadata.get(key) != value for key, value in wanted["metadata"].items()):
        changed.append("labels")
    return changed
