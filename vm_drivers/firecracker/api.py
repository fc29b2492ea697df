"""Firecracker's REST API over its unix socket: the models of every call the driver makes.

Each request model names the definition it implements in Firecracker's OpenAPI spec
(``SPEC_DEFINITION``) and forbids unknown fields; ``ENDPOINTS`` lists every (method, path) the
driver calls with its body and answer models. ``tests/firecracker/test_api_spec.py`` checks all
of it against the official ``firecracker-api.yaml``: field names, required fields, enums, types.

Success is ``204 No Content`` (GETs: ``200`` with JSON). A refusal carries
``{"fault_message": ...}``, which :class:`FirecrackerAPIError` keeps verbatim.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vm_drivers.errors import DriverTimeout, VMOperationFailed

__all__ = [
    "ENDPOINTS",
    "MINIMUM_VERSION",
    "VSOCK_OVERRIDE_VERSION",
    "ApiExchange",
    "ApiObserver",
    "BootSource",
    "Drive",
    "Endpoint",
    "EntropyDevice",
    "Fault",
    "FirecrackerAPI",
    "FirecrackerAPIError",
    "FirecrackerVersion",
    "FullVmConfiguration",
    "InstanceActionInfo",
    "InstanceInfo",
    "Logger",
    "MachineConfiguration",
    "MemoryBackend",
    "Metrics",
    "NetworkInterface",
    "NetworkOverride",
    "SnapshotCreateParams",
    "SnapshotLoadParams",
    "Vm",
    "Vsock",
    "VsockOverride",
    "parse_version",
]

Version = tuple[int, int, int]

# 1.8 added ACPI on x86_64: without it the Debian kernel finds no CPUs, IOAPIC or virtio devices.
MINIMUM_VERSION: Version = (1, 8, 0)
# ``vsock_override`` on snapshot load and ``mtu`` on network interfaces arrived in 1.16.
VSOCK_OVERRIDE_VERSION: Version = (1, 16, 0)


def parse_version(text: str) -> Version:
    """``"1.12.1"``, ``"v1.12.1"`` or ``"1.17.0-dev"`` as a comparable triple."""
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"not a Firecracker version: {text!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


# -- requests ---------------------------------------------------------------------------------


class _Request(BaseModel):
    """A request body: unknown fields are refused here, before Firecracker sees them."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    SPEC_DEFINITION: ClassVar[str]

    def payload(self) -> dict[str, Any]:
        """The JSON body; unset optional fields are left out so older versions accept it."""
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


LogLevel = Literal["Error", "Warning", "Info", "Debug", "Trace", "Off"]


class Logger(_Request):
    SPEC_DEFINITION: ClassVar[str] = "Logger"

    log_path: str
    level: LogLevel = "Warning"
    show_level: bool = True
    show_log_origin: bool = False


class Metrics(_Request):
    SPEC_DEFINITION: ClassVar[str] = "Metrics"

    metrics_path: str


class MachineConfiguration(_Request):
    SPEC_DEFINITION: ClassVar[str] = "MachineConfiguration"

    vcpu_count: int = Field(ge=1, le=32)
    mem_size_mib: int = Field(ge=1)
    smt: bool = False
    track_dirty_pages: bool = False
    # "Transparent" exists only on releases newer than the oldest one we support.
    huge_pages: Literal["None", "2M"] = "None"

    @field_validator("vcpu_count")
    @classmethod
    def _one_or_even(cls, value: int) -> int:
        if value != 1 and value % 2:
            raise ValueError("Firecracker takes 1 vCPU or an even number of them")
        return value


class BootSource(_Request):
    SPEC_DEFINITION: ClassVar[str] = "BootSource"

    kernel_image_path: str
    initrd_path: str | None = None
    # Replaces Firecracker's default command line entirely.
    boot_args: str | None = None


class Drive(_Request):
    SPEC_DEFINITION: ClassVar[str] = "Drive"

    drive_id: str
    is_root_device: bool = False
    path_on_host: str
    is_read_only: bool
    cache_type: Literal["Unsafe", "Writeback"] = "Unsafe"
    io_engine: Literal["Sync", "Async"] = "Sync"


class NetworkInterface(_Request):
    SPEC_DEFINITION: ClassVar[str] = "NetworkInterface"

    iface_id: str
    host_dev_name: str
    guest_mac: str | None = None
    mtu: int | None = Field(default=None, ge=68, le=65535)


class Vsock(_Request):
    SPEC_DEFINITION: ClassVar[str] = "Vsock"

    guest_cid: int = Field(default=3, ge=3)
    uds_path: str


class EntropyDevice(_Request):
    """A virtio-rng device; the guest needs ``virtio-rng.ko``."""

    SPEC_DEFINITION: ClassVar[str] = "EntropyDevice"


class InstanceActionInfo(_Request):
    SPEC_DEFINITION: ClassVar[str] = "InstanceActionInfo"

    action_type: Literal["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]


class Vm(_Request):
    SPEC_DEFINITION: ClassVar[str] = "Vm"

    state: Literal["Paused", "Resumed"]


class SnapshotCreateParams(_Request):
    SPEC_DEFINITION: ClassVar[str] = "SnapshotCreateParams"

    snapshot_type: Literal["Full", "Diff"] = "Full"
    snapshot_path: str
    mem_file_path: str


class MemoryBackend(_Request):
    SPEC_DEFINITION: ClassVar[str] = "MemoryBackend"

    backend_type: Literal["File", "Uffd"] = "File"
    backend_path: str


class NetworkOverride(_Request):
    SPEC_DEFINITION: ClassVar[str] = "NetworkOverride"

    iface_id: str
    host_dev_name: str


class VsockOverride(_Request):
    SPEC_DEFINITION: ClassVar[str] = "VsockOverride"

    uds_path: str


class SnapshotLoadParams(_Request):
    SPEC_DEFINITION: ClassVar[str] = "SnapshotLoadParams"

    snapshot_path: str
    mem_backend: MemoryBackend
    resume_vm: bool = False
    track_dirty_pages: bool | None = None
    network_overrides: list[NetworkOverride] | None = None
    vsock_override: VsockOverride | None = None


# -- answers ----------------------------------------------------------------------------------


class _Answer(BaseModel):
    """A response body: fields newer releases add are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
    SPEC_DEFINITION: ClassVar[str]


class FirecrackerVersion(_Answer):
    SPEC_DEFINITION: ClassVar[str] = "FirecrackerVersion"

    firecracker_version: str

    @property
    def triple(self) -> Version:
        return parse_version(self.firecracker_version)


class InstanceInfo(_Answer):
    SPEC_DEFINITION: ClassVar[str] = "InstanceInfo"

    app_name: str
    id: str
    state: Literal["Not started", "Running", "Paused"]
    vmm_version: str


class FullVmConfiguration(_Answer):
    """``GET /vm/config``: kept as plain JSON, compared with what the driver sent."""

    SPEC_DEFINITION: ClassVar[str] = "FullVmConfiguration"

    boot_source: dict[str, Any] | None = Field(default=None, alias="boot-source")
    machine_config: dict[str, Any] | None = Field(default=None, alias="machine-config")
    drives: list[dict[str, Any]] = Field(default_factory=list)
    network_interfaces: list[dict[str, Any]] = Field(
        default_factory=list, alias="network-interfaces"
    )
    vsock: dict[str, Any] | None = None
    entropy: dict[str, Any] | None = None


class Fault(_Answer):
    SPEC_DEFINITION: ClassVar[str] = "Error"

    fault_message: str = ""


# -- the endpoints ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One call of the API: ``path`` may hold ``{placeholders}`` filled per call."""

    method: Literal["GET", "PUT", "PATCH"]
    path: str
    body: type[_Request] | None = None
    answer: type[_Answer] | None = None


ENDPOINTS: dict[str, Endpoint] = {
    "version": Endpoint("GET", "/version", answer=FirecrackerVersion),
    "describe": Endpoint("GET", "/", answer=InstanceInfo),
    "vm_config": Endpoint("GET", "/vm/config", answer=FullVmConfiguration),
    "logger": Endpoint("PUT", "/logger", Logger),
    "metrics": Endpoint("PUT", "/metrics", Metrics),
    "machine_config": Endpoint("PUT", "/machine-config", MachineConfiguration),
    "boot_source": Endpoint("PUT", "/boot-source", BootSource),
    "drive": Endpoint("PUT", "/drives/{drive_id}", Drive),
    "network_interface": Endpoint("PUT", "/network-interfaces/{iface_id}", NetworkInterface),
    "vsock": Endpoint("PUT", "/vsock", Vsock),
    "entropy": Endpoint("PUT", "/entropy", EntropyDevice),
    "action": Endpoint("PUT", "/actions", InstanceActionInfo),
    "vm_state": Endpoint("PATCH", "/vm", Vm),
    "snapshot_create": Endpoint("PUT", "/snapshot/create", SnapshotCreateParams),
    "snapshot_load": Endpoint("PUT", "/snapshot/load", SnapshotLoadParams),
}


@dataclass(frozen=True)
class ApiExchange:
    """One request and its answer, as an observer sees it."""

    method: str
    path: str
    body: dict[str, Any] | None
    status: int
    answer: Any


ApiObserver = Callable[[ApiExchange], None]

A = TypeVar("A", bound=_Answer)


class FirecrackerAPIError(VMOperationFailed):
    """Firecracker refused a request; ``fault_message`` is its own text, verbatim.

    Part of the driver error tree (a :class:`~vm_drivers.errors.VMOperationFailed`).
    """

    def __init__(self, method: str, path: str, status: int, fault_message: str) -> None:
        super().__init__(
            f"Firecracker refused {method} {path} (HTTP {status}): {fault_message}; check the "
            "firecracker driver's configuration (image paths, sizes) against this Firecracker "
            "version, then start the project again"
        )
        self.method = method
        self.path = path
        self.status = status
        self.fault_message = fault_message


class FirecrackerAPI:
    """An async client of one Firecracker process's API socket; close it with ``aclose``."""

    def __init__(
        self,
        socket_path: Path,
        *,
        timeout_s: float = 10.0,
        observer: ApiObserver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.socket_path = socket_path
        self._timeout_s = timeout_s
        self._observer = observer
        self._client = httpx.AsyncClient(
            transport=transport or httpx.AsyncHTTPTransport(uds=str(socket_path)),
            base_url="http://localhost",
            timeout=timeout_s,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self, endpoint: Endpoint, body: _Request | None = None, **path_params: str
    ) -> Any:
        """Send one call; return the decoded JSON answer (``None`` for 204)."""
        path = endpoint.path.format(**path_params)
        payload = body.payload() if body is not None else None
        try:
            response = await self._client.request(endpoint.method, path, json=payload)
        except httpx.TimeoutException as err:
            raise DriverTimeout(
                f"Firecracker's API did not answer {endpoint.method} {path} within "
                f"{self._timeout_s:g}s; the VMM is stuck: stop the project (it is killed) and "
                "start it again"
            ) from err
        except httpx.TransportError as err:
            raise VMOperationFailed(
                f"could not reach Firecracker's API at {self.socket_path} ({err or type(err)}); "
                "the Firecracker process has exited: start the project again"
            ) from err
        answer = _decode(response)
        if self._observer is not None:
            self._observer(
                ApiExchange(endpoint.method, path, payload, response.status_code, answer)
            )
        if response.is_error:
            fault = answer.get("fault_message") if isinstance(answer, dict) else None
            raise FirecrackerAPIError(
                endpoint.method, path, response.status_code, str(fault or response.text)
            )
        return answer

    async def get(self, endpoint: Endpoint, answer: type[A]) -> A:
        data = await self.request(endpoint)
        try:
            return answer.model_validate(data)
        except ValidationError as err:
            raise VMOperationFailed(
                f"Firecracker answered {endpoint.method} {endpoint.path} with something "
                f"unexpected ({err.error_count()} problems: {data!r:.200}); this Firecracker "
                "version may be unsupported: use a release from 1.8 on"
            ) from err

    # -- the calls the driver makes, by name ----------------------------------------------------

    async def version(self) -> FirecrackerVersion:
        return await self.get(ENDPOINTS["version"], FirecrackerVersion)

    async def describe(self) -> InstanceInfo:
        return await self.get(ENDPOINTS["describe"], InstanceInfo)

    async def vm_config(self) -> FullVmConfiguration:
        return await self.get(ENDPOINTS["vm_config"], FullVmConfiguration)

    async def put(self, name: str, body: _Request, **path_params: str) -> None:
        endpoint = ENDPOINTS[name]
        if endpoint.body is not type(body):
            raise TypeError(f"{name} takes a {endpoint.body}, not {type(body).__name__}")
        await self.request(endpoint, body, **path_params)

    async def action(self, action_type: Literal["InstanceStart", "SendCtrlAltDel"]) -> None:
        await self.put("action", InstanceActionInfo(action_type=action_type))

    async def set_state(self, state: Literal["Paused", "Resumed"]) -> None:
        await self.put("vm_state", Vm(state=state))


def _decode(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return json.loads(response.content)
    except ValueError:
        return {"fault_message": response.text}
