"""``LimaDriver``: project VMs on Lima 2.x, through ``limactl``.

Two modes (see ``per_project`` and ``shared``): by default every project VM is a Lima instance
of its own; with ``shared_instance`` (or ``LIMA_INSTANCE``) set, projects are sandboxes in that
one instance. The mode of a VM is kept in its record, so VMs made before a change of mode keep
working.

The channel is ``limactl shell`` running a small launcher that becomes the guest agent (see
``guest_launcher``). The agent zipapp is copied in with ``limactl copy`` the first time a launch
finds it missing; it is named by its digest, so each version is copied once. A VM has one
channel: opening another ends the previous agent and every command it started.

The agent runs as root (through Lima's user's passwordless sudo) and every command as an
unprivileged user without sudo (``COMMAND_USER``), so commands cannot reach the agent's channel,
its code or the firewall. The launcher says on each launch whether it could keep them apart;
the last answer is kept for ``probe`` (doctor), with a warning when it could not.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Protocol

import anyio
import anyio.abc

from guest_runtime.bundle import write_agent_zipapp
from vm_drivers.base import (
    Availability,
    DriverContext,
    VMCreationResult,
    VMDriver,
    VMInfo,
    VMSpec,
    VMStatus,
)
from vm_drivers.config import LimaDriverConfig
from vm_drivers.errors import (
    DriverConfigError,
    DriverError,
    DriverUnavailable,
    GuestUnreachable,
    VMCreationFailed,
    VMNotFound,
)
from vm_drivers.kit.lifecycle import ClosingDriver
from vm_drivers.lima.channel import LauncherExited, LimaChannel, open_launcher, tail
from vm_drivers.lima.guest import COMMAND_USER, Guest, Launch
from vm_drivers.lima.guest_launcher import (
    AGENT_MISSING,
    BAD_OPTIONS,
    COMMAND_USER_UNSAFE,
    NEEDS_ROOT,
    SANDBOX_MISSING,
    STATUS_PREFIX,
    WORKSPACE_MISSING,
)
from vm_drivers.lima.instances import Instances
from vm_drivers.lima.limactl import MINIMUM_MAJOR_VERSION, Limactl, LimaInstance
from vm_drivers.lima.per_project import PerProjectPlacement
from vm_drivers.lima.records import LimaVMRecord, RecordStore, instance_name
from vm_drivers.lima.shared import SharedPlacement

__all__ = ["LimaDriver"]

log = logging.getLogger(__name__)

# `$LIMA_HOME/<name>/<this>` must fit a unix socket path: 104 bytes on macOS (108 on Linux).
LONGEST_SOCKET = "ssh.sock.1234567890123456"
UNIX_PATH_MAX = 104


class _Placement(Protocol):
    """Where a mode keeps a VM and how it runs it (per_project.py, shared.py)."""

    mode: str

    async def conflict(self, record: LimaVMRecord) -> str | None: ...
    async def create(self, record: LimaVMRecord) -> None: ...
    async def start(self, record: LimaVMRecord, spec: VMSpec | None) -> None: ...
    async def stop(self, record: LimaVMRecord) -> None: ...
    async def destroy(self, record: LimaVMRecord) -> None: ...
    def status(self, record: LimaVMRecord, instance: LimaInstance | None) -> VMStatus: ...
    def launch(self, record: LimaVMRecord) -> Launch: ...


class LimaDriver(ClosingDriver):
    name: ClassVar[str] = "lima"

    def __init__(self, config: LimaDriverConfig, context: DriverContext) -> None:
        self.config = config
        self.context = context
        self.root = context.data_dir / "lima"
        self.limactl = Limactl(config.limactl, config.lima_home, timeout_s=config.command_timeout_s)
        self.instances = Instances(self.limactl, stop_timeout_s=config.stop_timeout_s)
        self.guest = Guest(self.limactl, timeout_s=config.command_timeout_s)
        self.records = RecordStore(self.root / "vms")
        self.per_project = PerProjectPlacement(config, context, self.instances, self.root / "yaml")
        self.shared = SharedPlacement(config, context, self.instances, self.guest)
        self._channels: dict[str, LimaChannel] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._lima_home: Path | None = None
        self._version = ""

    # -- plumbing -----------------------------------------------------------------------------

    def _lock(self, vm_id: str) -> anyio.Lock:
        return self._locks.setdefault(vm_id, anyio.Lock())

    def _placement(self, record: LimaVMRecord) -> _Placement:
        return self.shared if record.mode == "shared" else self.per_project

    async def _checked(self) -> Path:
        """limactl is there, is 2.x and works here; returns its LIMA_HOME (checked once)."""
        if self._lima_home is None:
            (major, minor, patch), text = await self.limactl.version()
            if major < MINIMUM_MAJOR_VERSION:
                raise DriverUnavailable(
                    "lima",
                    f"limactl {major}.{minor}.{patch} is too old ({text!r}): ProjectVM needs Lima "
                    f"{MINIMUM_MAJOR_VERSION}.0 or newer (for `template:` bases, random ssh ports "
                    "and the list format it reads)",
                    "upgrade Lima (macOS: `brew upgrade lima`)",
                )
            info = await self.limactl.info()  # also where a root user is refused
            home = info.get("limaHome") or self.config.lima_home or Path.home() / ".lima"
            self._lima_home = Path(str(home))
            self._version = text
        return self._lima_home

    def _check_socket_path(self, lima_home: Path, name: str) -> None:
        socket = lima_home / name / LONGEST_SOCKET
        if len(str(socket)) >= UNIX_PATH_MAX:
            raise DriverConfigError(
                f"Lima's socket path {socket} would be {len(str(socket))} bytes, over the "
                f"{UNIX_PATH_MAX - 1} a unix socket allows on macOS; set the lima driver's "
                "lima_home (LIMA_HOME) to a shorter directory"
            )

    async def _close_channel(self, vm_id: str) -> None:
        channel = self._channels.pop(vm_id, None)
        if channel is not None:
            await channel.aclose()

    def _log_path(self, vm_id: str) -> Path:
        return self.root / "logs" / f"{vm_id}.log"

    def _instance_name(self, project_id: str) -> str:
        return instance_name(self.config.instance_prefix, self.context.instance_id, project_id)

    def _new_record(self, spec: VMSpec, vm_id: str) -> LimaVMRecord:
        shared = self.config.shared_instance
        record = LimaVMRecord(
            vm_id=vm_id,
            project_id=spec.project_id,
            name=spec.name,
            mode="shared" if shared else "instance",
            instance=shared or self._instance_name(spec.project_id),
            workspace="",
            created_at=datetime.now(UTC),
            labels={**spec.labels, **self.context.labels(spec.project_id, vm_id)},
            spec=spec,
        )
        workspace = self._placement(record).launch(record).root
        return record.model_copy(update={"workspace": workspace})

    # -- VMDriver -----------------------------------------------------------------------------

    async def create_project_vm(self, spec: VMSpec) -> VMCreationResult:
        lima_home = await self._checked()
        # VM ids stay `pvm-<project id>`; the Lima instance gets a short derived name instead.
        vm_id = f"pvm-{spec.project_id}"
        record = self._new_record(spec, vm_id)
        if record.mode == "instance":
            self._check_socket_path(lima_home, record.instance)
        placement = self._placement(record)
        async with self._lock(vm_id):
            try:
                existing = self.records.load(vm_id)
            except VMNotFound:
                existing = None
            if existing is not None and existing.state != VMStatus.CREATING:
                raise VMCreationFailed(
                    f"VM {vm_id} exists already (Lima instance {existing.instance}); destroy it "
                    "first or start it"
                )
            problem = await placement.conflict(record)
            if problem:
                raise VMCreationFailed(f"could not create VM {vm_id}: {problem}")
            self.records.save(record)  # intent first: a crash from here on leaves a findable VM
            try:
                await placement.create(record)
            except DriverError as err:
                with anyio.CancelScope(shield=True):
                    try:
                        await placement.destroy(record)
                    except DriverError:
                        pass  # gc finds what is left through its labels
                    self.records.delete(vm_id)
                if isinstance(err, DriverUnavailable):
                    raise  # a setup problem, and its hint says how to fix it
                raise VMCreationFailed(f"could not create VM {vm_id}: {err}") from err
            record = record.model_copy(update={"state": VMStatus.RUNNING})
            self.records.save(record)
        return VMCreationResult(
            vm_id=vm_id,
            status=VMStatus.RUNNING,
            workspace_path=f"lima:{record.instance}:{record.workspace}",
            details={"instance": record.instance, "mode": record.mode},
        )

    async def start_project_vm(self, vm_id: str, spec: VMSpec | None = None) -> None:
        async with self._lock(vm_id):
            record = self.records.load(vm_id)
            await self._checked()
            await self._placement(record).start(record, spec)
            update: dict[str, object] = {"state": VMStatus.RUNNING}
            if spec is not None:
                update["spec"] = spec
            self.records.save(record.model_copy(update=update))

    async def stop_project_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            record = self.records.load(vm_id)
            await self._checked()
            await self._close_channel(vm_id)
            await self._placement(record).stop(record)
            self.records.save(record.model_copy(update={"state": VMStatus.STOPPED}))

    async def destroy_project_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            try:
                record: LimaVMRecord | None = self.records.load(vm_id)
            except VMNotFound:
                record = await self._stray_record(vm_id)
            await self._close_channel(vm_id)
            if record is not None:
                await self._checked()
                await self._placement(record).destroy(record)
            self.records.delete(vm_id)
            await anyio.Path(self._log_path(vm_id)).unlink(missing_ok=True)
        self._locks.pop(vm_id, None)

    async def _stray_record(self, vm_id: str) -> LimaVMRecord | None:
        """A record for a VM that lost its own (what gc destroys), if one of ours is there."""
        if not vm_id.startswith("pvm-"):
            return None
        await self._checked()
        spec = VMSpec(project_id=vm_id.removeprefix("pvm-"), name="stray")
        record = self._new_record(spec, vm_id)
        strays = {info.vm_id for info in await self._strays(set())}
        return record if vm_id in strays else None

    async def get_vm_status(self, vm_id: str) -> VMStatus:
        record = self.records.load(vm_id)
        await self._checked()
        instance = await self.instances.get(record.instance)
        return self._placement(record).status(record, instance)

    async def get_vm_url(self, vm_id: str) -> str | None:
        self.records.load(vm_id)
        return None

    async def open_channel(self, vm_id: str) -> anyio.abc.ByteStream:
        async with self._lock(vm_id):
            record = self.records.load(vm_id)
            await self._checked()
            placement = self._placement(record)
            status = placement.status(record, await self.instances.get(record.instance))
            if status != VMStatus.RUNNING:
                raise GuestUnreachable(f"VM {vm_id} is {status}; start it first")
            # One agent per VM: the launcher also ends one that an earlier server left behind.
            await self._close_channel(vm_id)
            launch = placement.launch(record)
            channel = await self._launch(launch, self._log_path(vm_id))
            self._channels[vm_id] = channel
            await self._note_commands(launch, channel.preamble)
            return channel

    def _commands_path(self) -> Path:
        return self.root / "commands.json"

    async def _note_commands(self, launch: Launch, preamble: bytes) -> None:
        """Keep what the launcher said about who commands run as (for doctor); warn if shared."""
        lines = preamble.decode(errors="replace").splitlines()
        said = [line.removeprefix(STATUS_PREFIX) for line in lines if STATUS_PREFIX in line[:20]]
        if not said:
            return
        status = said[-1]
        if not status.startswith("separate"):
            log.warning("Lima instance %s: %s", launch.instance, status)
        note = {"instance": launch.instance, "status": status, "at": datetime.now(UTC).isoformat()}
        path = anyio.Path(self._commands_path())
        await path.parent.mkdir(parents=True, exist_ok=True)
        await path.write_text(json.dumps(note) + "\n")

    async def _last_commands_note(self) -> str | None:
        try:
            note = json.loads(await anyio.Path(self._commands_path()).read_text())
            return f"{note['status']} (last launch, in Lima instance {note['instance']})"
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def _launch(self, launch: Launch, log_path: Path) -> LimaChannel:
        for attempt in range(2):
            marker = f"projectvm-agent-ready-{secrets.token_hex(8)}"
            try:
                return await open_launcher(
                    self.guest.launcher_argv(launch, marker),
                    env=self.limactl.environment(),
                    marker=marker.encode(),
                    log_path=log_path,
                    timeout_s=self.config.command_timeout_s,
                )
            except LauncherExited as exited:
                if exited.code == AGENT_MISSING and attempt == 0:
                    await self._copy_agent(launch)
                    continue
                raise self._launch_error(launch, exited) from None
        raise AssertionError("unreachable: the second launch returns or raises")

    async def _copy_agent(self, launch: Launch) -> None:
        local = await anyio.to_thread.run_sync(write_agent_zipapp, self.root / "agent")
        await self.guest.copy_in(launch.instance, local, launch.staged)

    def _launch_error(
        self, launch: Launch, exited: LauncherExited
    ) -> DriverError | GuestUnreachable:
        where = f"Lima instance {launch.instance}"
        if exited.code == SANDBOX_MISSING:
            return DriverUnavailable(
                "lima",
                f"shared_sandbox is 'bwrap' but {where} has no bubblewrap",
                f"install it there (`limactl shell {launch.instance} sudo apt-get install -y "
                "bubblewrap`) or set shared_sandbox to 'auto'",
            )
        if exited.code == WORKSPACE_MISSING:
            return GuestUnreachable(
                f"the workspace {launch.root} is missing in {where} (removed by hand?); destroy "
                "the project VM and create it again"
            )
        if exited.code == NEEDS_ROOT:
            return DriverUnavailable(
                "lima",
                f"the guest agent must run as root in {where} to keep commands away from it, "
                f"and Lima's user could not become root: {exited.log_tail}",
                f"check `limactl shell {launch.instance} sudo -n true`; Lima gives its user "
                "passwordless sudo unless the image or a provisioning script took it away",
            )
        if exited.code == COMMAND_USER_UNSAFE:
            return DriverUnavailable(
                "lima",
                f"commands cannot run as an unprivileged user in {where}: {exited.log_tail}",
                "fix the user as the message says, then open the channel again",
            )
        if exited.code == BAD_OPTIONS:
            return GuestUnreachable(f"the launcher in {where} refused its options: {exited}")
        return GuestUnreachable(
            f"could not start the guest agent in {where} (status {exited.code}): "
            f"{exited.log_tail}; check that python3 is installed there"
        )

    async def list_vms(self) -> list[VMInfo]:
        await self._checked()
        records = self.records.all()
        instances = await self.limactl.list()
        found = {}
        for record in records:
            instance = instances.get(record.instance)
            status = self._placement(record).status(record, instance)
            detail = f"Lima instance {record.instance}" + (
                f" ({instance.status})" if instance else " (missing)"
            )
            found[record.vm_id] = VMInfo(
                vm_id=record.vm_id,
                project_id=record.project_id,
                status=status,
                driver=self.name,
                created_at=record.created_at,
                labels=record.labels,
                detail=f"{detail}, workspace {record.workspace}",
            )
        for stray in await self._strays(set(found), instances):
            found.setdefault(stray.vm_id, stray)
        return sorted(found.values(), key=lambda info: info.vm_id)

    async def _strays(
        self, known: set[str], instances: dict[str, LimaInstance] | None = None
    ) -> list[VMInfo]:
        if instances is None:
            instances = await self.limactl.list()
        strays = self.per_project.strays(known, instances)
        return strays + await self.shared.strays(known, instances)

    async def storage_mode(self) -> str:
        """How ``max_storage_gb`` is kept by this driver (shown by get_project)."""
        return (
            "server checks: the workspace is on the instance's own disk, shared with its "
            "system; API writes past max_storage_gb are refused and usage is measured after "
            "every command, but a command can write past it until then"
        )

    async def probe(self) -> Availability:
        try:
            path = self.limactl.path()
            lima_home = await self._checked()
        except DriverError as err:
            return Availability(driver=self.name, usable=False, reason=str(err))
        version = self._version
        details = {"limactl": f"{path} ({version})", "lima_home": str(lima_home)}
        shared = self.config.shared_instance
        try:
            if shared is None:
                sample = instance_name(self.config.instance_prefix, "probe", "probe")
                self._check_socket_path(lima_home, sample)
                details["mode"] = "one instance per project"
                reason = f"{version} works here; each project gets its own Lima instance"
                last = await self._last_commands_note()
                details["commands"] = last or (
                    f"run as {COMMAND_USER} (no sudo), the agent as root; every launch checks it "
                    "and says so in the VM's log"
                )
                if last is not None and last.startswith("shared"):
                    reason += f"; WARNING: commands are not kept apart from the agent: {last}"
                return Availability(driver=self.name, usable=True, reason=reason, details=details)
            details["mode"] = f"projects share Lima instance {shared}"
            usable, reason, found = await self.shared.readiness(shared)
            return Availability(
                driver=self.name, usable=usable, reason=reason, details={**details, **found}
            )
        except DriverError as err:
            return Availability(driver=self.name, usable=False, reason=str(err), details=details)

    async def aclose(self) -> None:
        for vm_id in list(self._channels):
            await self._close_channel(vm_id)

    async def log_tail(self, vm_id: str) -> str:
        """The end of the VM's channel log (the agent's stderr and limactl's messages)."""
        return await tail(self._log_path(vm_id))


_: type[VMDriver] = LimaDriver
