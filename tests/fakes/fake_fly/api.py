"""``FakeFlyMachinesAPI``: a stateful, spec-validating stand-in for the Fly Machines API.

It keeps apps, Machines, volumes, secrets and leases; Machines go through Fly's states
(created → starting → started → suspending → suspended → stopping → stopped → destroyed) and
run for real as local sandboxes with whatever ``init.exec`` they were given (see ``sandbox``);
a fake Fly Proxy (see ``proxy``) routes to them. Every request is checked against the spec
before anything happens, every answer after (see ``spec`` and ``deviations``): a request the
spec does not allow gets a 400 and is recorded in ``violations``, which a test fixture asserts
empty. Behaviour follows the live API as the research notes describe it; where it had to choose
(start on a started Machine answers 200; suspend refused answers 400), the choice is noted here.

Knobs for tests: ``fail_next`` (inject a status, also after the change was made: the "silent
success"), ``hold_lease`` (someone else's lease), ``failing_images`` (Machines that never
boot), ``crashing_images`` (whose main process dies at once), ``volume_region`` (volumes land in
another region), ``refuse_suspend``, ``gate`` (pause an answer after its change was made, to
kill a client in between).

Served two ways: ``transport()`` for httpx in-process, ``serve_http()`` on a local port.
"""

from __future__ import annotations

import fnmatch
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from guest_runtime.agent.walk import remove_tree

from .proxy import FakeFlyProxy
from .proxy import Route as ProxyRoute
from .sandbox import FakeLaunchError, MachineSandbox
from .spec import Operation, SpecValidator, SpecViolation

__all__ = ["TEST_TIMINGS", "FakeFlyMachinesAPI", "Gate", "Injection"]

# Driver timings for tests: quick retries, still bounded waits.
TEST_TIMINGS: dict[str, Any] = {
    "retry_initial_s": 0.01,
    "retry_max_s": 0.05,
    "rate_limit_wait_s": 0.05,
    "lease_wait_s": 2,
    "wait_timeout_s": 5,
    "start_timeout_s": 30,
    "channel_timeout_s": 20,
    "stop_timeout_s": 5,
}

Answer = tuple[int, Any]
Handler = Callable[["_Call"], Awaitable[Answer]]


def _id(prefix: str = "") -> str:
    return prefix + secrets.token_hex(7)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Refusal(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


@dataclass
class Injection:
    method: str
    path: str  # fnmatch pattern on the path after /v1
    status: int
    times: int = 1
    after_commit: bool = False  # make the change, then answer with the failure
    body: dict[str, Any] | None = None
    retry_after: float | None = None
    hits: int = 0


@dataclass
class Gate:
    """Holds one matching answer after its change was made, until ``release`` is set."""

    method: str
    path: str
    reached: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class FakeLease:
    nonce: str
    owner: str
    description: str
    expires_at: float
    version: str
    release_after_attempts: int | None = None

    def live(self) -> bool:
        return time.monotonic() < self.expires_at


@dataclass
class FakeApp:
    name: str
    org_slug: str
    network: str
    id: str = field(default_factory=_id)
    secrets: dict[str, str] = field(default_factory=dict)
    ips: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FakeVolume:
    id: str
    app: str
    name: str
    region: str
    size_gb: int
    encrypted: bool
    directory: Path
    state: str = "created"
    attached_machine_id: str | None = None
    created_at: str = field(default_factory=_now_iso)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "region": self.region,
            "size_gb": self.size_gb,
            "state": self.state,
            "encrypted": self.encrypted,
            "created_at": self.created_at,
            "zone": f"{self.region}-zone",
            "fstype": "ext4",
        }
        if self.attached_machine_id:
            wire["attached_machine_id"] = self.attached_machine_id
        return wire


@dataclass
class FakeMachine:
    id: str
    app: str
    name: str
    region: str
    config: dict[str, Any]
    directory: Path
    state: str = "created"
    instance_id: str = field(default_factory=lambda: _id("01"))
    created_at: str = field(default_factory=_now_iso)
    updated_at: str = field(default_factory=_now_iso)
    events: list[dict[str, Any]] = field(default_factory=list)
    lease: FakeLease | None = None
    sandbox: MachineSandbox | None = None
    restarts: int = 0
    boots: int = 0

    def to_wire(self, nonce: str | None = None) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "region": self.region,
            "instance_id": self.instance_id,
            "private_ip": "fdaa:0:1:a7b:1::2",
            "config": self.config,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "events": list(reversed(self.events[-20:])),
            "image_ref": {
                "registry": "registry.fly.io",
                "repository": self.config.get("image", ""),
            },
        }
        if nonce:
            wire["nonce"] = nonce
        return wire


@dataclass
class _Call:
    operation: Operation
    path: dict[str, str]
    query: dict[str, Any]
    body: Any
    nonce: str | None


class FakeFlyMachinesAPI:
    """Use as ``async with FakeFlyMachinesAPI(directory) as fake``."""

    TOKEN = "fake-fly-api-token-for-tests"

    def __init__(
        self,
        root: Path,
        *,
        org_slug: str = "fake-org",
        region: str = "iad",
        token: str = TOKEN,
        bwrap: str = "bwrap",
        spec: SpecValidator | None = None,
    ) -> None:
        self.root = root
        self.org_slug = org_slug
        self.region = region
        self.token = token
        self.bwrap = bwrap
        self.spec = spec or SpecValidator()
        self.apps: dict[str, FakeApp] = {}
        self.machines: dict[str, FakeMachine] = {}
        self.volumes: dict[str, FakeVolume] = {}
        # Knobs.
        self.injections: list[Injection] = []
        self.gates: list[Gate] = []
        self.failing_images: set[str] = set()  # never boot (an image that cannot be pulled)
        self.crashing_images: set[str] = set()  # boot, then the main process exits 127
        self.volume_region: str | None = None
        self.refuse_suspend = False
        self.stop_grace_s = 5.0
        # What happened.
        self.requests: list[tuple[str, str]] = []
        self.validated = 0
        self.violations: list[str] = []
        self.proxy = FakeFlyProxy(self._route)
        self._changed = anyio.Event()
        self._closing = False
        self._sandboxes: set[MachineSandbox] = set()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._server: uvicorn.Server | None = None
        self._server_done = anyio.Event()
        self._server_done.set()  # until there is a server
        self.app = Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self._endpoint,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                )
            ]
        )
        self._handlers: dict[str, Handler] = {
            "Apps_list": self._apps_list,
            "Apps_create": self._apps_create,
            "Apps_show": self._apps_show,
            "Apps_delete": self._apps_delete,
            "Secrets_update": self._secrets_update,
            "IPAssignments_create": self._ips_create,
            "Volumes_list": self._volumes_list,
            "Volumes_create": self._volumes_create,
            "Volumes_get_by_id": self._volumes_show,
            "Volume_delete": self._volumes_delete,
            "Machines_list": self._machines_list,
            "Machines_create": self._machines_create,
            "Machines_show": self._machines_show,
            "Machines_update": self._machines_update,
            "Machines_start": self._machines_start,
            "Machines_stop": self._machines_stop,
            "Machines_suspend": self._machines_suspend,
            "Machines_delete": self._machines_delete,
            "Machines_wait": self._machines_wait,
            "Machines_create_lease": self._lease_create,
            "Machines_show_lease": self._lease_show,
            "Machines_release_lease": self._lease_release,
        }

    # -- running --------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeFlyMachinesAPI:
        self.root.mkdir(parents=True, exist_ok=True)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        await self.proxy.start(self._task_group)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True  # no more boots or restarts
        with anyio.CancelScope(shield=True):
            for sandbox in list(self._sandboxes):
                await sandbox.kill()
            if self._server is not None:
                self._server.should_exit = True
            await self.proxy.aclose()
        assert self._task_group is not None
        # uvicorn finishes by itself once told to (closing its connections); then the rest.
        with anyio.move_on_after(10, shield=True):
            await self._server_done.wait()
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(None, None, None)
        # Volumes go with the fake; iteratively, as a workspace may be deeper than Python
        # recurses (and pytest's own clean-up of the temporary directory would fail on it).
        await anyio.to_thread.run_sync(remove_tree, str(self.root / "volumes"))

    def transport(self) -> httpx.ASGITransport:
        """An httpx transport that calls this fake in-process (no sockets for the API)."""
        return httpx.ASGITransport(app=self.app)

    async def serve_http(self) -> str:
        """Serve the API on a loopback port; return its base URL."""
        assert self._task_group is not None, "enter the fake first"
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # connections queue here even before uvicorn is up: nothing to wait for
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2
        )
        server = self._server = uvicorn.Server(config)
        done = self._server_done = anyio.Event()

        async def serve() -> None:
            try:
                await server.serve([sock])
            finally:
                done.set()

        self._task_group.start_soon(serve)
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def proxy_address(self) -> str:
        return self.proxy.address

    def driver_options(self, base_url: str) -> dict[str, Any]:
        """FlyDriverConfig options that point the driver at this fake and its proxy."""
        return {
            "api_base_url": base_url,
            "api_token": self.token,
            "org_slug": self.org_slug,
            "region": self.region,
            "image": "registry.fly.io/projectvm-runtime:fake",
            "proxy_url": "ws://{app}.fly.dev/rpc",
            "proxy_address": self.proxy_address,
            **TEST_TIMINGS,
        }

    def assert_clean(self) -> None:
        """Fail when any request or answer broke the spec."""
        assert not self.violations, "requests outside the spec:\n" + "\n".join(self.violations)

    # -- knobs ----------------------------------------------------------------------------------

    def fail_next(self, method: str, path: str, status: int, **options: Any) -> Injection:
        injection = Injection(method, path, status, **options)
        self.injections.append(injection)
        return injection

    def gate(self, method: str, path: str) -> Gate:
        gate = Gate(method, path)
        self.gates.append(gate)
        return gate

    def hold_lease(
        self,
        machine_id: str,
        *,
        owner: str = "someone-else@example.com",
        ttl_s: float = 3600,
        release_after_attempts: int | None = None,
    ) -> FakeLease:
        """Someone else takes the Machine's lease (released after that many tries of others)."""
        machine = self.machines[machine_id]
        machine.lease = FakeLease(
            nonce=_id("foreign-"),
            owner=owner,
            description="not projectvm",
            expires_at=time.monotonic() + ttl_s,
            version=machine.instance_id,
            release_after_attempts=release_after_attempts,
        )
        return machine.lease

    def live_machines(self) -> list[FakeMachine]:
        return [m for m in self.machines.values() if m.state != "destroyed"]

    # -- the HTTP endpoint ------------------------------------------------------------------

    def _injection(self, method: str, path: str) -> Injection | None:
        for injection in self.injections:
            if (
                injection.hits < injection.times
                and injection.method == method
                and fnmatch.fnmatchcase(path, injection.path)
            ):
                injection.hits += 1
                return injection
        return None

    def _injected_answer(self, injection: Injection) -> Response:
        body = injection.body or {"error": f"injected failure {injection.status}"}
        headers = {"fly-request-id": _id("req-")}
        if injection.retry_after is not None:
            headers["retry-after"] = str(injection.retry_after)
        return JSONResponse(body, status_code=injection.status, headers=headers)

    async def _endpoint(self, request: Request) -> Response:
        method = request.method
        full_path = request.url.path
        self.requests.append((method, full_path))
        body = await request.body()
        try:
            operation, path_values, query, payload = self.spec.check_request(
                method, full_path, list(request.query_params.multi_items()), body
            )
        except SpecViolation as violation:
            self.violations.append(f"{method} {full_path}: {violation}")
            return JSONResponse(
                {"error": f"fake Fly API: the request is outside the spec: {violation}"},
                status_code=400,
            )
        self.validated += 1
        expected = {f"Bearer {self.token}", f"FlyV1 {self.token}"}
        if request.headers.get("authorization") not in expected:
            return self._answer(operation, 401, {"error": "Authenticate: token validation error"})
        path = full_path[len(self.spec.base_path) :]
        injection = self._injection(method, path)
        if injection is not None and not injection.after_commit:
            return self._injected_answer(injection)
        call = _Call(
            operation, path_values, query, payload, request.headers.get("fly-machine-lease-nonce")
        )
        try:
            status, answer = await self._handlers[operation.operation_id](call)
        except _Refusal as refusal:
            status, answer = refusal.status, refusal.body
        except KeyError as err:
            status, answer = 404, {"error": f"{err.args[0]} not found"}
        self._notify()
        for gate in self.gates:
            if gate.method == method and fnmatch.fnmatchcase(path, gate.path):
                self.gates.remove(gate)
                gate.reached.set()
                await gate.release.wait()
                break
        if injection is not None:
            return self._injected_answer(injection)
        return self._answer(operation, status, answer)

    def _answer(self, operation: Operation, status: int, answer: Any) -> Response:
        try:
            self.spec.check_response(operation, status, answer)
        except SpecViolation as violation:
            self.violations.append(f"the fake's own answer: {violation}")
            return JSONResponse({"error": f"fake Fly API bug: {violation}"}, status_code=500)
        headers = {"fly-request-id": _id("req-")}
        if answer is None:
            return Response(status_code=status, headers=headers)
        return JSONResponse(answer, status_code=status, headers=headers)

    # -- state changes ----------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _set_state(self, machine: FakeMachine, state: str, event: str, **request: Any) -> None:
        machine.state = state
        machine.updated_at = _now_iso()
        entry: dict[str, Any] = {
            "id": _id("ev"),
            "type": event,
            "status": state,
            "source": "flyd",
            "timestamp": int(time.time() * 1000),
        }
        if request:
            entry["request"] = request
        machine.events.append(entry)
        self._notify()

    def _app(self, name: str) -> FakeApp:
        app = self.apps.get(name)
        if app is None:
            raise _Refusal(404, f"app {name} not found")
        return app

    def _machine(self, call: _Call) -> FakeMachine:
        self._app(call.path["app_name"])
        machine = self.machines.get(call.path["machine_id"])
        if machine is None or machine.app != call.path["app_name"] or machine.state == "destroyed":
            raise _Refusal(404, f"machine {call.path['machine_id']} not found")
        return machine

    def _check_lease(self, machine: FakeMachine, nonce: str | None) -> None:
        lease = machine.lease
        if lease is None or not lease.live():
            return
        if nonce != lease.nonce:
            raise _Refusal(
                409,
                f"machine ID {machine.id} lease currently held by {lease.owner}, expires at "
                f"{int(lease.expires_at)}",
            )

    # -- apps -----------------------------------------------------------------------------------

    async def _apps_list(self, call: _Call) -> Answer:
        apps = [a for a in self.apps.values() if a.org_slug == call.query["org_slug"]]
        listed = [
            {
                "id": a.id,
                "name": a.name,
                "machine_count": sum(1 for m in self.live_machines() if m.app == a.name),
                "network": a.network,
            }
            for a in apps
        ]
        return 200, {"apps": listed, "total_apps": len(listed)}

    async def _apps_create(self, call: _Call) -> Answer:
        body = call.body
        name = body.get("name") or body.get("app_name")
        if body.get("name") and body.get("app_name") and body["name"] != body["app_name"]:
            raise _Refusal(400, "name and app_name differ")
        if not name:
            raise _Refusal(400, "app_name is required")
        if body.get("org_slug") != self.org_slug:
            raise _Refusal(404, f"organization {body.get('org_slug')} not found")
        if name in self.apps:
            raise _Refusal(422, f"app name {name} is already taken", status="name_taken")
        self.apps[name] = FakeApp(name, self.org_slug, body.get("network") or "default")
        return 201, None

    async def _apps_show(self, call: _Call) -> Answer:
        app = self._app(call.path["app_name"])
        return 200, {
            "id": app.id,
            "name": app.name,
            "organization": {"name": app.org_slug, "slug": app.org_slug},
            "status": "deployed",
        }

    async def _apps_delete(self, call: _Call) -> Answer:
        app = self._app(call.path["app_name"])
        machines = [m for m in self.live_machines() if m.app == app.name]
        if not call.query.get("force") and any(m.state == "started" for m in machines):
            raise _Refusal(412, "app has running machines; delete with force=true")
        for machine in machines:
            await self._destroy(machine)
        for volume in [v for v in self.volumes.values() if v.app == app.name]:
            del self.volumes[volume.id]
        del self.apps[app.name]
        return 202, None

    async def _secrets_update(self, call: _Call) -> Answer:
        self._app(call.path["app_name"]).secrets.update(call.body["values"])
        return 200, {}

    async def _ips_create(self, call: _Call) -> Answer:
        app = self._app(call.path["app_name"])
        kind = call.body["type"]
        address = {
            "ip": "66.241.124.1" if kind == "shared_v4" else f"2a09:8280:1::{len(app.ips) + 1:x}",
            "region": "global",
            "shared": kind == "shared_v4",
            "created_at": _now_iso(),
        }
        app.ips.append(address)
        return 200, address

    # -- volumes --------------------------------------------------------------------------------

    async def _volumes_list(self, call: _Call) -> Answer:
        app = self._app(call.path["app_name"])
        return 200, [v.to_wire() for v in self.volumes.values() if v.app == app.name]

    async def _volumes_create(self, call: _Call) -> Answer:
        app = self._app(call.path["app_name"])
        body = call.body
        size = int(body.get("size_gb") or 1)
        if not 1 <= size <= 500:
            raise _Refusal(400, "size_gb must be between 1 and 500")
        volume_id = _id("vol_")
        directory = self.root / "volumes" / volume_id
        directory.mkdir(parents=True)
        volume = FakeVolume(
            id=volume_id,
            app=app.name,
            name=body.get("name") or "data",
            region=self.volume_region or body.get("region") or self.region,
            size_gb=size,
            encrypted=body.get("encrypted", True),
            directory=directory,
        )
        self.volumes[volume_id] = volume
        return 200, volume.to_wire()

    async def _volumes_show(self, call: _Call) -> Answer:
        volume = self.volumes[call.path["volume_id"]]
        return 200, volume.to_wire()

    async def _volumes_delete(self, call: _Call) -> Answer:
        volume = self.volumes[call.path["volume_id"]]
        if volume.attached_machine_id:
            raise _Refusal(412, f"volume {volume.id} is attached to {volume.attached_machine_id}")
        volume.state = "pending_destroy"
        return 200, volume.to_wire()

    # -- machines -------------------------------------------------------------------------------

    async def _machines_list(self, call: _Call) -> Answer:
        app = self._app(call.path["app_name"])
        wanted = {
            key[len("metadata.") :]: value
            for key, value in call.query.items()
            if key.startswith("metadata.")
        }
        found = []
        for machine in self.machines.values():
            if machine.app != app.name:
                continue
            if machine.state == "destroyed" and not call.query.get("include_deleted"):
                continue
            if call.query.get("region") and machine.region != call.query["region"]:
                continue
            metadata = machine.config.get("metadata") or {}
            if any(metadata.get(key) != value for key, value in wanted.items()):
                continue
            found.append(machine.to_wire())
        return 200, found

    async def _machines_create(self, call: _Call) -> Answer:
        app = self._app(call.path["app_name"])
        body = call.body
        config = body.get("config") or {}
        if not config.get("image"):
            raise _Refusal(400, "config.image is required")
        name = body.get("name") or _id("machine-")
        if any(m.name == name and m.app == app.name for m in self.live_machines()):
            raise _Refusal(409, f"a machine named {name} already exists in {app.name}")
        region = body.get("region") or self.region
        mounts = config.get("mounts") or []
        if len(mounts) > 1:
            raise _Refusal(400, "a Machine mounts at most one volume")
        for mount in mounts:
            volume = self.volumes.get(mount.get("volume", ""))
            if volume is None or volume.app != app.name:
                raise _Refusal(400, f"volume {mount.get('volume')} not found in {app.name}")
            if volume.attached_machine_id:
                raise _Refusal(400, f"volume {volume.id} is attached to another Machine")
            if volume.region != region:
                raise _Refusal(
                    400,
                    f"volume {volume.id} is in region {volume.region}, the Machine asked for "
                    f"{region}: create the Machine in the volume's region",
                )
        machine_id = _id()
        directory = self.root / "machines" / machine_id
        directory.mkdir(parents=True)
        machine = FakeMachine(machine_id, app.name, name, region, config, directory)
        for mount in mounts:
            self.volumes[mount["volume"]].attached_machine_id = machine_id
        self.machines[machine_id] = machine
        self._set_state(machine, "created", "launch")
        nonce = None
        if body.get("lease_ttl"):
            nonce = _id("lease-")
            machine.lease = FakeLease(
                nonce,
                "projectvm@fake",
                "",
                time.monotonic() + body["lease_ttl"],
                machine.instance_id,
            )
        if not body.get("skip_launch"):
            self._boot(machine)
        return 200, machine.to_wire(nonce)

    async def _machines_show(self, call: _Call) -> Answer:
        return 200, self._machine(call).to_wire()

    async def _machines_update(self, call: _Call) -> Answer:
        machine = self._machine(call)
        self._check_lease(machine, call.nonce)
        body = call.body
        config = body.get("config") or {}
        if not config.get("image"):
            raise _Refusal(400, "config.image is required")
        if body.get("region") not in (None, machine.region) or body.get("name") not in (
            None,
            machine.name,
        ):
            raise _Refusal(400, "name and region cannot change; destroy and create instead")
        volumes = lambda c: [m.get("volume") for m in c.get("mounts") or []]  # noqa: E731
        if volumes(config) != volumes(machine.config):
            raise _Refusal(400, "the mounted volume cannot change; destroy and create instead")
        was_running = machine.state == "started"
        machine.config = config
        machine.instance_id = _id("01")  # every config update is a new version
        sandbox, machine.sandbox = machine.sandbox, None
        if sandbox is not None:
            self._set_state(machine, "replacing", "update")
            await sandbox.stop(signal.SIGTERM, self.stop_grace_s)
            self._set_state(machine, "stopped", "update")
        if was_running or not body.get("skip_launch"):
            machine.restarts = 0
            self._boot(machine)
        return 200, machine.to_wire()

    def _boot(self, machine: FakeMachine) -> None:
        self._set_state(machine, "starting", "start")
        assert self._task_group is not None
        self._task_group.start_soon(self._run_machine, machine)

    async def _run_machine(self, machine: FakeMachine) -> None:
        """Launch the Machine's sandbox; when its main process ends, the Machine stops (or
        restarts, per its restart policy)."""
        while not self._closing:
            machine.boots += 1
            if machine.config.get("image") in self.failing_images:
                self._set_state(machine, "failed", "launch", error="failed to pull the image")
                return
            try:
                sandbox = await self._launch(machine)
            except (FakeLaunchError, OSError) as err:
                self._set_state(machine, "failed", "launch", error=str(err))
                return
            self._sandboxes.add(sandbox)
            try:
                if self._closing or machine.state != "starting":
                    return  # stopped or destroyed while it booted
                machine.sandbox = sandbox
                self._set_state(machine, "started", "start")
                code = await sandbox.process.wait()
                if machine.sandbox is sandbox:
                    machine.sandbox = None
            finally:
                with anyio.CancelScope(shield=True):
                    await sandbox.kill()
                self._sandboxes.discard(sandbox)
            if self._closing or machine.state != "started":
                return  # asked to end: whoever asked sets the final state
            restart = machine.config.get("restart") or {}
            retries = restart.get("max_retries") or 10
            if (
                code != 0
                and restart.get("policy", "on-failure") == "on-failure"
                and machine.restarts < retries
            ):
                machine.restarts += 1
                self._set_state(machine, "starting", "restart", exit_event={"exit_code": code})
                continue
            self._set_state(machine, "stopped", "exit", exit_event={"exit_code": code})
            return

    async def _launch(self, machine: FakeMachine) -> MachineSandbox:
        app = self.apps[machine.app]
        config = machine.config
        mounts = {}
        for mount in config.get("mounts") or []:
            mounts[mount["path"]] = self.volumes[mount["volume"]].directory
        guest = config.get("guest") or {}
        environment = {
            **(config.get("env") or {}),
            **app.secrets,
            "FLY_APP_NAME": app.name,
            "FLY_MACHINE_ID": machine.id,
            "FLY_REGION": machine.region,
            "FLY_IMAGE_REF": str(config.get("image")),
            "FLY_PRIVATE_IP": "fdaa:0:1:a7b:1::2",
            "FLY_VM_MEMORY_MB": str(guest.get("memory_mb", 256)),
        }
        if config.get("image") in self.crashing_images:
            init = dict(config.get("init") or {})
            crash = "echo 'exec: python3: not found' >&2; exit 127"
            init["exec"] = ["sh", "-c", crash, *init.get("exec", [])]
            config = {**config, "init": init}
        return await MachineSandbox.launch(
            bwrap=self.bwrap,
            machine_dir=machine.directory,
            config=config,
            environment=environment,
            mounts=mounts,
        )

    async def _machines_start(self, call: _Call) -> Answer:
        machine = self._machine(call)
        self._check_lease(machine, call.nonce)
        previous = machine.state
        if previous in ("started", "starting"):
            pass  # the fake's choice: starting a started Machine is not an error
        elif previous == "suspended" and machine.sandbox is not None:
            self._set_state(machine, "starting", "resume")
            machine.sandbox.thaw()
            self._set_state(machine, "started", "resume")
        elif previous in ("created", "stopped", "failed", "suspended"):
            machine.restarts = 0
            self._boot(machine)
        else:
            raise _Refusal(412, f"machine {machine.id} is {previous} and cannot be started now")
        return 200, {"previous_state": previous, "migrated": False, "new_host": ""}

    async def _machines_stop(self, call: _Call) -> Answer:
        machine = self._machine(call)
        self._check_lease(machine, call.nonce)
        if machine.state in ("stopped", "created", "failed"):
            return 200, None
        body = call.body or {}
        signum = getattr(signal, str(body.get("signal", "SIGTERM")), signal.SIGTERM)
        self._set_state(machine, "stopping", "stop")
        assert self._task_group is not None
        self._task_group.start_soon(self._finish_stop, machine, signum)
        return 200, None

    async def _finish_stop(self, machine: FakeMachine, signum: int) -> None:
        sandbox = machine.sandbox
        if sandbox is not None:
            machine.sandbox = None
            await sandbox.stop(signum, self.stop_grace_s)
        self._set_state(machine, "stopped", "stop")

    async def _machines_suspend(self, call: _Call) -> Answer:
        machine = self._machine(call)
        self._check_lease(machine, call.nonce)
        if machine.state == "suspended":
            return 200, None
        guest = machine.config.get("guest") or {}
        init = machine.config.get("init") or {}
        if self.refuse_suspend or guest.get("memory_mb", 256) > 2048 or init.get("swap_size_mb"):
            raise _Refusal(
                400, "machine cannot be suspended: over 2 GB of memory, swap, or refused"
            )
        if machine.state != "started" or machine.sandbox is None:
            raise _Refusal(
                412, f"machine {machine.id} is {machine.state}; only a started one suspends"
            )
        self._set_state(machine, "suspending", "suspend")
        machine.sandbox.freeze()
        self._set_state(machine, "suspended", "suspend")
        return 200, None

    async def _destroy(self, machine: FakeMachine) -> None:
        self._set_state(machine, "destroying", "destroy")
        sandbox, machine.sandbox = machine.sandbox, None
        if sandbox is not None:
            await sandbox.kill()
        for volume in self.volumes.values():
            if volume.attached_machine_id == machine.id:
                volume.attached_machine_id = None
        machine.lease = None
        self._set_state(machine, "destroyed", "destroy")

    async def _machines_delete(self, call: _Call) -> Answer:
        machine = self._machine(call)
        self._check_lease(machine, call.nonce)
        if machine.state in ("started", "starting") and not call.query.get("force"):
            raise _Refusal(412, "failed_precondition: machine still active, refusing to delete")
        await self._destroy(machine)
        return 200, {"ok": True}

    async def _machines_wait(self, call: _Call) -> Answer:
        machine = self._machine(call)
        wanted = call.query.get("state", "started")
        timeout = call.query.get("timeout", 60)
        if not 1 <= timeout <= 60:
            raise _Refusal(400, "invalid_argument: timeout must be between 1 and 60 seconds")
        if wanted == "stopped" and not call.query.get("instance_id"):
            raise _Refusal(400, "instance_id is required to wait for stopped")
        with anyio.move_on_after(timeout):
            while machine.state != wanted:
                await self._changed.wait()
            return 200, {"ok": True}
        raise _Refusal(
            408, f"machine failed to reach desired state, {wanted}, currently {machine.state}"
        )

    # -- leases ---------------------------------------------------------------------------------

    def _lease_wire(self, lease: FakeLease) -> dict[str, Any]:
        return {
            "status": "success",
            "data": {
                "nonce": lease.nonce,
                "expires_at": int(time.time() + max(0.0, lease.expires_at - time.monotonic())),
                "owner": lease.owner,
                "description": lease.description,
                "version": lease.version,
            },
        }

    async def _lease_create(self, call: _Call) -> Answer:
        machine = self._machine(call)
        ttl = int((call.body or {}).get("ttl") or 30)
        lease = machine.lease
        if lease is not None and lease.live() and call.nonce != lease.nonce:
            if lease.release_after_attempts is not None:
                lease.release_after_attempts -= 1
                if lease.release_after_attempts <= 0:
                    machine.lease = None
            return 409, {
                "status": "error",
                "message": f"machine ID {machine.id} lease currently held by {lease.owner}, "
                f"expires at {int(lease.expires_at)}",
                "code": "lease_currently_held",
            }
        if lease is not None and lease.live():
            lease.expires_at = time.monotonic() + ttl  # a refresh by the holder
        else:
            machine.lease = lease = FakeLease(
                _id("lease-"),
                "projectvm@fake",
                (call.body or {}).get("description", ""),
                time.monotonic() + ttl,
                machine.instance_id,
            )
        return 200, self._lease_wire(lease)

    async def _lease_show(self, call: _Call) -> Answer:
        machine = self._machine(call)
        if machine.lease is None or not machine.lease.live():
            raise _Refusal(404, "no active lease")
        return 200, self._lease_wire(machine.lease)

    async def _lease_release(self, call: _Call) -> Answer:
        machine = self._machine(call)
        lease = machine.lease
        if lease is None or not lease.live():
            raise _Refusal(404, "no active lease")
        if call.nonce != lease.nonce:
            raise _Refusal(409, "the lease nonce does not match (send fly-machine-lease-nonce)")
        machine.lease = None
        return 200, {"status": "success", "data": {"ok": True}}

    # -- the proxy's routing --------------------------------------------------------------------

    async def _route(self, app_name: str, forced: str | None) -> ProxyRoute:
        app = self.apps.get(app_name)
        if app is None:
            return 404, f"no app {app_name}"
        candidates = [m for m in self.live_machines() if m.app == app_name]
        if forced is not None:
            candidates = [m for m in candidates if m.id == forced]
            if not candidates:
                return 404, f"no Machine {forced} in {app_name}"
        started = [m for m in candidates if m.state == "started" and m.sandbox is not None]
        if not started:
            return 503, f"no started Machine in {app_name} (autostart is off)"
        machine = started[0]
        services = machine.config.get("services") or []
        if not services:
            return 502, f"Machine {machine.id} has no services"
        port = (
            machine.sandbox.ports.get(int(services[0]["internal_port"]))
            if machine.sandbox
            else None
        )
        if port is None:
            return 502, f"Machine {machine.id} does not listen"
        return "127.0.0.1", port
