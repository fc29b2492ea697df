"""The ``fly`` driver: each project VM is a Fly Machine in its own Fly app, with a volume.

Per project: an app ``<prefix><instance id>-<project id>`` on its own private network, public
IPs so Fly Proxy routes to it, the agent's bearer token as an app secret, a volume at
``/workspace`` (created first: the Machine goes where the volume landed), and one Machine running
the guest agent's HTTP face. The channel is a WebSocket to the agent through Fly Proxy, pinned to
the Machine with ``fly-force-instance-id``. The root filesystem is reset on every boot; the agent
is injected with ``config.files`` at each boot and only ``/workspace`` persists.

Every Machine mutation happens under a lease. Creation is crash-safe: the intent is recorded
before the first call and each id as soon as it is known; a POST that failed ambiguously is never
repeated before looking (by name and metadata) for what it may have made. Sleep is ``suspend``
(memory kept), falling back to ``stop`` when Fly refuses; waking is ``start``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import uuid
from collections.abc import Awaitable
from datetime import datetime
from typing import ClassVar, TypeVar

import anyio
import anyio.abc
import httpx
from pydantic import SecretStr

from vm_drivers.base import (
    LABEL_INSTANCE,
    LABEL_PROJECT,
    LABEL_VM,
    Availability,
    Billing,
    DriverContext,
    VMCreationResult,
    VMDriver,
    VMInfo,
    VMSpec,
    VMStatus,
)
from vm_drivers.config import FlyDriverConfig
from vm_drivers.errors import (
    DriverError,
    DriverUnavailable,
    GuestUnreachable,
    VMCreationFailed,
    VMNotFound,
)
from vm_drivers.fly.api import DEFAULT_BASE_URL, FlyAPIError, FlyMachinesAPI, RetryPolicy
from vm_drivers.fly.errors import translate_fly_error
from vm_drivers.fly.guest import guest_for, preset_name
from vm_drivers.fly.machines import (
    GONE_STATES,
    MACHINE_NAME,
    META_INSTANCE,
    META_LABELS,
    META_PROJECT,
    META_VM,
    TOKEN_SECRET,
    VOLUME_NAME,
    config_differences,
    events_summary,
    guest_wish,
    machine_config,
    machine_status,
)
from vm_drivers.fly.models import (
    CreateAppRequest,
    CreateMachineRequest,
    CreateVolumeRequest,
    IPAssignmentRequest,
    Machine,
    UpdateMachineRequest,
    Volume,
)
from vm_drivers.fly.operations import MachineOperations, call
from vm_drivers.fly.state import FlyStateStore, FlyVMRecord
from vm_drivers.kit.lifecycle import ClosingDriver
from vm_drivers.streams_ws import WebSocketByteStream, WebSocketRejected, connect_websocket

__all__ = ["FlyDriver"]

T = TypeVar("T")
log = logging.getLogger("projectvm.fly")

FORCE_INSTANCE_HEADER = "fly-force-instance-id"
MAX_APP_NAME = 63


class FlyDriver(ClosingDriver):
    name: ClassVar[str] = "fly"

    def __init__(
        self,
        config: FlyDriverConfig,
        context: DriverContext,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.context = context
        self.state = FlyStateStore(config.state_dir or context.data_dir / "fly")
        self._transport = transport
        self._client: FlyMachinesAPI | None = None
        self._locks: dict[str, anyio.Lock] = {}
        self._channels: dict[str, WebSocketByteStream] = {}
        self._retry = RetryPolicy(
            attempts=config.retry_attempts,
            initial_s=config.retry_initial_s,
            max_s=config.retry_max_s,
            rate_limit_floor_s=config.rate_limit_wait_s,
        )
        self.ops = MachineOperations(self.api, config, self._retry)

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.config.api_base_url or os.environ.get("FLY_FLAPS_BASE_URL") or DEFAULT_BASE_URL

    def api(self) -> FlyMachinesAPI:
        if self._client is None:
            token = self.config.api_token
            if token is None and os.environ.get("FLY_API_TOKEN"):
                token = SecretStr(os.environ["FLY_API_TOKEN"])
            if token is None or not token.get_secret_value().strip():
                raise DriverUnavailable(
                    "fly",
                    "no Fly API token (FLY_API_TOKEN is not set)",
                    "create an org token with `fly tokens create org -o <org>` and export it "
                    "as FLY_API_TOKEN",
                )
            self._client = FlyMachinesAPI(
                self.base_url,
                token,
                transport=self._transport,
                timeout_s=self.config.api_timeout_s,
                retry=self._retry,
            )
        return self._client

    async def _call(self, action: str, awaitable: Awaitable[T]) -> T:
        return await call(action, awaitable)

    def _lock(self, vm_id: str) -> anyio.Lock:
        return self._locks.setdefault(vm_id, anyio.Lock())

    # -- names --------------------------------------------------------------------------------

    def app_name(self, vm_id: str) -> str:
        """The app of a VM. App names are global on Fly, lowercase letters, digits and '-':
        the instance id keeps installations apart, '_' in project ids becomes '-'."""
        if not vm_id.startswith("pvm-"):
            raise VMNotFound.of(vm_id, "not a ProjectVM VM id")
        slug = vm_id[len("pvm-") :].lower().replace("_", "-")
        name = f"{self.config.app_prefix}{self.context.instance_id}-{slug}"
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name) or len(name) > MAX_APP_NAME:
            raise VMNotFound.of(
                vm_id,
                f"it cannot name a Fly app ({name!r}: lowercase letters, digits and '-', at "
                f"most {MAX_APP_NAME} characters)",
            )
        return name

    def _parse_app_name(self, app: str) -> tuple[str, str] | None:
        """(instance id, vm id) of an app this driver's naming made, else None."""
        prefix = self.config.app_prefix
        if not app.startswith(prefix):
            return None
        instance, dash, slug = app[len(prefix) :].partition("-")
        if not dash or not instance or not slug:
            return None
        return instance, "pvm-" + slug.replace("-", "_")

    # -- resolving a VM to its Machine --------------------------------------------------------

    async def _machines_of(self, app: str, vm_id: str) -> list[Machine]:
        """This VM's live Machines in ``app`` (raises VMNotFound when the app is gone)."""
        machines = await self._call(
            f"listing the Machines of {app}", self.api().list_machines(app, {META_VM: vm_id})
        )
        return [
            m for m in machines if m.metadata.get(META_VM) == vm_id and m.state not in GONE_STATES
        ]

    async def _resolve(self, vm_id: str) -> tuple[str, Machine | None]:
        """The VM's app and Machine (None: an app without one, an interrupted creation)."""
        app = self.app_name(vm_id)
        record = self.state.load(vm_id)
        if record is not None and record.machine_id:
            try:
                machine = await self.api().get_machine(app, record.machine_id)
            except FlyAPIError as err:
                if err.status_code != 404:
                    raise translate_fly_error(err, f"looking up VM {vm_id}") from err
            else:
                if machine.state not in GONE_STATES:
                    return app, machine
        machines = await self._machines_of(app, vm_id)
        if machines and record is not None and record.machine_id != machines[0].id:
            # Found by metadata: a creation the server was killed in the middle of.
            self.state.save(record.model_copy(update={"machine_id": machines[0].id}))
        return app, machines[0] if machines else None

    # -- creation -----------------------------------------------------------------------------

    async def _ensure_app(self, record: FlyVMRecord) -> None:
        api = self.api()
        app = record.app
        request = CreateAppRequest(
            app_name=app, name=app, org_slug=self.config.org_slug, network=app
        )
        for attempt in range(self._retry.attempts):
            try:
                existing = await api.get_app(app)
            except FlyAPIError as err:
                if err.status_code != 404:
                    raise translate_fly_error(err, f"looking up app {app}") from err
            else:
                org = existing.organization.slug if existing.organization else ""
                if org and org != self.config.org_slug:
                    raise VMCreationFailed(
                        f"the Fly app name {app} belongs to organisation {org}, not "
                        f"{self.config.org_slug}; set another app_prefix for the fly driver"
                    )
                return
            try:
                await api.create_app(request)
                return
            except FlyAPIError as err:
                if err.status_code == 422 and err.fly_status == "name_taken":
                    continue  # ours from an earlier try, or someone else's: the lookup says
                if not err.ambiguous:
                    raise translate_fly_error(err, f"creating app {app}") from err
                await anyio.sleep(self._retry.delay(attempt, err))
        raise VMCreationFailed(
            f"could not create the Fly app {app} after {self._retry.attempts} tries; try again"
        )

    async def _ensure_ips(self, record: FlyVMRecord) -> FlyVMRecord:
        if record.ips_assigned or not self.config.assign_public_ips:
            return record
        for kind in ("shared_v4", "v6"):
            await self._call(
                f"assigning a {kind} address to {record.app}",
                self.api().assign_ip(record.app, IPAssignmentRequest(type=kind)),
            )
        record = record.model_copy(update={"ips_assigned": True})
        self.state.save(record)
        return record

    async def _ensure_secret(self, record: FlyVMRecord) -> None:
        token = self.state.token(record.vm_id) or self.state.new_token(record.vm_id)
        await self._call(
            f"setting the agent token of {record.app}",
            self.api().set_secrets(record.app, {TOKEN_SECRET: token}),
        )

    async def _ensure_volume(self, record: FlyVMRecord) -> tuple[FlyVMRecord, Volume]:
        api = self.api()
        spec = record.spec
        cpus, memory_mb = guest_wish(spec, self.config)
        request = CreateVolumeRequest(
            name=VOLUME_NAME,
            region=self.config.region,
            size_gb=max(1, math.ceil(spec.disk_gb or self.config.disk_gb)),
            compute=guest_for(cpus, memory_mb, self.config.cpu_kind),
        )
        for attempt in range(self._retry.attempts):
            volumes = await self._call(
                f"listing volumes of {record.app}", api.list_volumes(record.app)
            )
            usable = [
                v
                for v in volumes
                if v.name == VOLUME_NAME
                and v.state not in ("scheduling_destroy", "pending_destroy", "destroyed")
                and (record.volume_id in (None, v.id))
            ]
            if usable:
                volume = usable[0]
                break
            try:
                volume = await api.create_volume(record.app, request)
                break
            except FlyAPIError as err:
                if not err.ambiguous:
                    raise translate_fly_error(err, f"creating the volume of {record.app}") from err
                await anyio.sleep(self._retry.delay(attempt, err))
        else:
            raise VMCreationFailed(
                f"could not create the workspace volume of {record.app}; try again"
            )
        record = record.model_copy(update={"volume_id": volume.id, "region": volume.region})
        self.state.save(record)
        return record, volume

    async def _ensure_machine(
        self, record: FlyVMRecord, volume: Volume
    ) -> tuple[FlyVMRecord, Machine]:
        api = self.api()
        request = CreateMachineRequest(
            name=MACHINE_NAME,
            region=volume.region,  # the volume decides: it lives on one host
            config=machine_config(record, volume, self.config, self.context),
            lease_ttl=self.config.lease_ttl_s,
        )
        for attempt in range(self._retry.attempts):
            found = await self._machines_of(record.app, record.vm_id)
            if found:
                machine = found[0]
                break
            try:
                machine = await api.create_machine(record.app, request)
                break
            except FlyAPIError as err:
                if not err.ambiguous:
                    raise translate_fly_error(err, f"creating the Machine of {record.app}") from err
                await anyio.sleep(self._retry.delay(attempt, err))
        else:
            raise VMCreationFailed(f"could not create the Machine of {record.app}; try again")
        record = record.model_copy(update={"machine_id": machine.id})
        self.state.save(record)
        return record, machine

    async def _provision(self, record: FlyVMRecord) -> FlyVMRecord:
        """Bring every resource of ``record`` into being (each step finds what exists)."""
        await self._ensure_app(record)
        record = await self._ensure_ips(record)
        await self._ensure_secret(record)
        record, volume = await self._ensure_volume(record)
        record, machine = await self._ensure_machine(record, volume)
        if machine.state != "started":
            async with self.ops.lease(record.app, machine.id, machine.nonce) as nonce:
                if machine.state in ("created", "stopped", "suspended"):
                    await self.ops.start(record.app, machine, nonce)
                await self.ops.wait_for(record.app, machine, "started")
        elif machine.nonce:
            async with self.ops.lease(record.app, machine.id, machine.nonce):
                pass
        return record

    async def create_project_vm(self, spec: VMSpec) -> VMCreationResult:
        vm_id = f"pvm-{spec.project_id}"
        app = self.app_name(vm_id)
        self.api()
        async with self._lock(vm_id):
            record = self.state.load(vm_id)
            if record is None or record.spec != spec:
                record = FlyVMRecord(
                    vm_id=vm_id,
                    project_id=spec.project_id,
                    app=app,
                    launch_id=(record.launch_id if record else uuid.uuid4().hex),
                    spec=spec,
                    volume_id=record.volume_id if record else None,
                    machine_id=record.machine_id if record else None,
                )
                self.state.save(record)  # the intent, before any call
            try:
                record = await self._provision(record)
                await self._probe_agent(vm_id, record)
            except (DriverError, GuestUnreachable) as err:
                cleaned = await self._clean_up_failed_creation(vm_id, app)
                raise VMCreationFailed(
                    f"could not create VM {vm_id} on Fly: {err}"
                    + ("" if cleaned else f"; its app {app} may remain: `projectvm gc` finds it")
                ) from err
        cpus, memory_mb = guest_wish(spec, self.config)
        guest = guest_for(cpus, memory_mb, self.config.cpu_kind)
        return VMCreationResult(
            vm_id=vm_id,
            status=VMStatus.RUNNING,
            workspace_path=f"fly-volume:{record.volume_id}",
            details={
                "app": app,
                "machine": record.machine_id or "",
                "region": record.region,
                "size": f"{preset_name(guest)} {guest.memory_mb}MB",
                # Fly Machines always reach the internet: the spec's network is not enforced.
                "network": "egress",
            },
        )

    async def _clean_up_failed_creation(self, vm_id: str, app: str) -> bool:
        cleaned = False
        with anyio.CancelScope(shield=True):
            try:
                await self._delete_app(app)
            except (FlyAPIError, DriverError) as err:
                log.warning("cleaning up the failed creation of %s: %s", vm_id, err)
            else:
                self.state.forget(vm_id)
                cleaned = True
        return cleaned

    async def _probe_agent(self, vm_id: str, record: FlyVMRecord) -> None:
        """Open and close the agent's channel once: the proxy routes, the token works."""
        assert record.machine_id is not None
        token = self.state.token(vm_id)
        assert token is not None
        try:
            stream = await self._connect(vm_id, record.app, record.machine_id, token)
        except GuestUnreachable as err:
            machine = await self._call(
                f"looking up {record.machine_id}",
                self.api().get_machine(record.app, record.machine_id),
            )
            raise GuestUnreachable(
                f"{err}; the Machine is {machine.state} ({events_summary(machine)})"
            ) from err
        await stream.aclose()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start_project_vm(self, vm_id: str, spec: VMSpec | None = None) -> None:
        async with self._lock(vm_id):
            app, machine = await self._resolve(vm_id)
            record = self.state.load(vm_id)
            if machine is None:
                if record is None:
                    raise VMNotFound.of(vm_id, f"its app {app} has no Machine")
                # A creation interrupted before its Machine existed: finish it.
                await self._provision(record)
                return
            if self.state.token(vm_id) is None:
                machine = await self._rekey(vm_id, app, machine)
            if record is not None:
                machine = await self._update_if_changed(record, app, machine, spec)
            if machine.state == "started":
                return
            async with self.ops.lease(app, machine.id) as nonce:
                if machine.state not in ("starting",):
                    await self.ops.start(app, machine, nonce)
                await self.ops.wait_for(app, machine, "started")

    async def _update_if_changed(
        self, record: FlyVMRecord, app: str, machine: Machine, spec: VMSpec | None
    ) -> Machine:
        """Bring the Machine's config in line with the spec and the current agent (a new
        ProjectVM version brings a new agent: it is injected at boot from the config)."""
        if spec is not None and spec != record.spec:
            record = record.model_copy(update={"spec": spec})
            self.state.save(record)
        mounts = machine.config.get("mounts") or [{}]
        volume = Volume(id=str(mounts[0].get("volume") or record.volume_id), region=machine.region)
        desired = machine_config(record, volume, self.config, self.context)
        changed = config_differences(machine.config, desired)
        if not changed:
            return machine
        log.info("updating Machine %s of %s: %s changed", machine.id, app, ", ".join(changed))
        running = machine.state == "started"
        request = UpdateMachineRequest(config=desired, skip_launch=not running)
        async with self.ops.lease(app, machine.id) as nonce:
            updated = await self._call(
                f"updating Machine {machine.id} ({', '.join(changed)} changed)",
                self.api().update_machine(app, machine.id, request, nonce),
            )
            if running:
                updated = await self.ops.wait_for(app, updated, "started")
        return updated

    async def resume_project_vm(self, vm_id: str) -> None:
        """Wake a suspended (or stopped) VM: its memory comes back if Fly kept the snapshot."""
        await self.start_project_vm(vm_id)

    async def _rekey(self, vm_id: str, app: str, machine: Machine) -> Machine:
        """This server lost the agent's token (a new data directory): set a new one. Secrets
        reach a Machine when it boots, so a running one is stopped first."""
        token = self.state.new_token(vm_id)
        await self._call(
            f"setting the agent token of {app}", self.api().set_secrets(app, {TOKEN_SECRET: token})
        )
        if machine.state in ("started", "starting", "suspended", "suspending"):
            async with self.ops.lease(app, machine.id) as nonce:
                await self.ops.stop(app, machine, nonce)
            return await self._call(
                f"looking up {machine.id}", self.api().get_machine(app, machine.id)
            )
        return machine

    async def stop_project_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            await self._close_channel(vm_id)
            app, machine = await self._resolve(vm_id)
            if machine is None or machine.state in ("stopped", "created"):
                return
            async with self.ops.lease(app, machine.id) as nonce:
                await self.ops.stop(app, machine, nonce)

    def billing(self, spec: VMSpec) -> Billing:
        """Fly bills a Machine by its guest size per second started, and its volume by size."""
        cpus = spec.cpus or self.config.cpus
        memory_mb = spec.memory_mb or self.config.memory_mb
        guest = guest_for(cpus, memory_mb, self.config.cpu_kind)
        return Billing(
            plan="fly",
            guest=preset_name(guest),
            cpus=guest.cpus,
            memory_mb=guest.memory_mb,
            volume_gb=max(1, math.ceil(spec.disk_gb or self.config.disk_gb)),
        )

    def suspended_bytes(self, vm_id: str) -> int:
        """Fly keeps a suspended Machine's memory on its side: nothing on this host."""
        return 0

    async def suspend_project_vm(self, vm_id: str) -> None:
        """Sleep keeping memory (Fly ``suspend``); where Fly refuses, a plain stop."""
        async with self._lock(vm_id):
            await self._close_channel(vm_id)
            app, machine = await self._resolve(vm_id)
            if machine is None or machine.state in ("suspended", "stopped", "created"):
                return
            async with self.ops.lease(app, machine.id) as nonce:
                try:
                    await self.api().suspend_machine(app, machine.id, nonce)
                except FlyAPIError as err:
                    if err.status_code in (401, 403, 409) or err.transient:
                        raise translate_fly_error(err, f"suspending Machine {machine.id}") from err
                    current = await self._call(
                        f"looking up {machine.id}", self.api().get_machine(app, machine.id)
                    )
                    if current.state not in ("suspending", "suspended"):
                        log.info("Fly refused to suspend %s (%s): stopping it", machine.id, err)
                        await self.ops.stop(app, current, nonce)
                        return
                await self.ops.wait_for(app, machine, "suspended")

    async def _delete_app(self, app: str) -> None:
        try:
            await self.api().delete_app(app)
        except FlyAPIError as err:
            if err.status_code != 404:
                raise translate_fly_error(err, f"deleting app {app}") from err

    async def destroy_project_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            await self._close_channel(vm_id)
            app = self.app_name(vm_id)
            try:
                machines = await self._machines_of(app, vm_id)
            except VMNotFound:
                machines = []
            for machine in machines:
                async with self.ops.lease(app, machine.id) as nonce:
                    try:
                        await self.api().delete_machine(app, machine.id, nonce)
                    except FlyAPIError as err:
                        if err.status_code != 404:
                            raise translate_fly_error(err, f"destroying {machine.id}") from err
            await self._delete_app(app)  # its volume and IPs go with it
            self.state.forget(vm_id)
        self._locks.pop(vm_id, None)

    async def get_vm_status(self, vm_id: str) -> VMStatus:
        _, machine = await self._resolve(vm_id)
        if machine is None:
            return VMStatus.FAILED  # an app without a Machine cannot run
        return machine_status(machine.state)

    async def get_vm_url(self, vm_id: str) -> str | None:
        await self._resolve(vm_id)
        # The app's only public service is the agent's, which agents must not call directly.
        return None

    # -- the channel --------------------------------------------------------------------------

    async def _close_channel(self, vm_id: str) -> None:
        channel = self._channels.pop(vm_id, None)
        if channel is not None:
            await channel.aclose()

    def _connect_to(self) -> tuple[str, int] | None:
        if not self.config.proxy_address:
            return None
        host, _, port = self.config.proxy_address.rpartition(":")
        return host.strip("[]"), int(port)

    async def _connect(
        self, vm_id: str, app: str, machine_id: str, token: str
    ) -> WebSocketByteStream:
        """The agent's WebSocket through Fly Proxy, retried until ``channel_timeout_s``."""
        url = self.config.proxy_url.format(app=app)
        headers = {"Authorization": f"Bearer {token}", FORCE_INSTANCE_HEADER: machine_id}
        timeout = self.config.channel_timeout_s
        deadline = anyio.current_time() + timeout
        attempt = 0
        while True:
            remaining = deadline - anyio.current_time()
            try:
                return await connect_websocket(
                    url,
                    headers=headers,
                    connect_to=self._connect_to(),
                    timeout=max(1.0, min(30.0, remaining)),
                )
            except WebSocketRejected as err:
                if err.status_code in (401, 403):
                    raise GuestUnreachable(
                        f"the agent of VM {vm_id} refused this server's token ({err}); stop and "
                        "start the project so the agent boots with the current secret"
                    ) from err
                last: GuestUnreachable = err  # the proxy cannot route to it yet
            except GuestUnreachable as err:
                last = err
            delay = min(self._retry.max_s, self._retry.initial_s * 2**attempt)
            attempt += 1
            if anyio.current_time() + delay > deadline:
                raise GuestUnreachable(
                    f"cannot reach the agent of VM {vm_id} through Fly Proxy within {timeout:g}s "
                    f"({last}); see `fly logs -a {app}`, or stop and start the project"
                )
            await anyio.sleep(delay)

    async def open_channel(self, vm_id: str) -> anyio.abc.ByteStream:
        async with self._lock(vm_id):
            try:
                app, machine = await self._resolve(vm_id)
            except VMNotFound as err:
                raise GuestUnreachable(f"VM {vm_id} does not exist ({err})") from err
            if machine is None or machine.state != "started":
                state = machine.state if machine else "without a Machine"
                raise GuestUnreachable(f"VM {vm_id} is {state}; start it first")
            token = self.state.token(vm_id)
            if token is None:
                raise GuestUnreachable(
                    f"this server has no agent token for VM {vm_id} (its data directory is new); "
                    "stop and start the project to set a new one"
                )
            # One channel per VM: the agent replaces its session too, this closes ours first.
            await self._close_channel(vm_id)
            stream = await self._connect(vm_id, app, machine.id, token)
            self._channels[vm_id] = stream
            return stream

    # -- inventory ----------------------------------------------------------------------------

    async def list_vms(self) -> list[VMInfo]:
        api = self.api()
        apps = await self._call(
            f"listing the apps of {self.config.org_slug}", api.list_apps(self.config.org_slug)
        )
        found: dict[str, VMInfo] = {}
        for listed in apps:
            parsed = self._parse_app_name(listed.name)
            if parsed is None:
                continue
            instance, vm_id = parsed
            try:
                machines = await api.list_machines(listed.name)
            except FlyAPIError as err:
                if err.status_code == 404:
                    continue  # deleted meanwhile
                raise translate_fly_error(err, f"listing the Machines of {listed.name}") from err
            ours = [m for m in machines if m.metadata.get(META_VM) and m.state not in GONE_STATES]
            if ours:
                machine = ours[0]
                metadata = machine.metadata
                try:
                    labels = json.loads(metadata.get(META_LABELS, "{}"))
                except ValueError:
                    labels = {}
                labels.update(
                    {
                        LABEL_PROJECT: metadata.get(META_PROJECT, ""),
                        LABEL_VM: metadata[META_VM],
                        LABEL_INSTANCE: metadata.get(META_INSTANCE, instance),
                    }
                )
                found[metadata[META_VM]] = VMInfo(
                    vm_id=metadata[META_VM],
                    project_id=metadata.get(META_PROJECT),
                    status=machine_status(machine.state),
                    driver=self.name,
                    created_at=_parse_time(machine.created_at),
                    labels=labels,
                    detail=f"app {listed.name}, Machine {machine.id} ({machine.state})",
                )
                continue
            record = self.state.load(vm_id) if instance == self.context.instance_id else None
            project_id = record.project_id if record else vm_id[len("pvm-") :]
            labels = {LABEL_PROJECT: project_id, LABEL_VM: vm_id, LABEL_INSTANCE: instance}
            if record is not None:
                labels = {**record.spec.labels, **labels}
            found[vm_id] = VMInfo(
                vm_id=vm_id,
                project_id=project_id,
                status=VMStatus.FAILED,
                driver=self.name,
                created_at=record.created_at if record else None,
                labels=labels,
                detail=f"app {listed.name} without a Machine (an interrupted creation)",
            )
        return sorted(found.values(), key=lambda info: info.vm_id)

    async def storage_mode(self) -> str:
        """How ``max_storage_gb`` is kept by this driver (shown by get_project)."""
        return (
            "filesystem: the workspace is a Fly volume of max_storage_gb rounded up to "
            "whole GB; the server refuses API writes past the exact limit"
        )

    async def probe(self) -> Availability:
        try:
            api = self.api()
            apps = await self._call("listing apps", api.list_apps(self.config.org_slug))
        except DriverError as err:
            return Availability(driver=self.name, usable=False, reason=str(err))
        ours = [a for a in apps if self._parse_app_name(a.name)]
        return Availability(
            driver=self.name,
            usable=True,
            reason=f"the Machines API at {self.base_url} answers for org {self.config.org_slug}",
            details={
                "api": self.base_url,
                "org": self.config.org_slug,
                "region": self.config.region,
                "image": self.config.image,
                "apps": str(len(ours)),
                # Said where an operator looks: a project's network "none" cannot be kept here.
                "network": "always egress: Fly Machines reach the internet, so a project's "
                "network 'none' is not enforced on fly",
            },
        )

    async def aclose(self) -> None:
        for vm_id in list(self._channels):
            await self._close_channel(vm_id)
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


_: type[VMDriver] = FlyDriver
