"""What the fly driver sends to and reads from the Machines API, as pydantic models.

Request bodies forbid unknown fields (a typo fails here, not at Fly) and are sent without their
unset fields. Response models ignore fields they do not name: the API grows new ones often.
Field names follow the API's JSON (``fly-machines-api.json`` and the live wire; the places where
those two disagree are listed by the test fake, ``tests/fakes/fake_fly/deviations.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "App",
    "CreateAppRequest",
    "CreateLeaseRequest",
    "CreateMachineRequest",
    "CreateVolumeRequest",
    "IPAssignmentRequest",
    "Lease",
    "ListedApp",
    "Machine",
    "MachineConfig",
    "MachineEvent",
    "MachineFile",
    "MachineGuest",
    "MachineInit",
    "MachineMount",
    "MachinePort",
    "MachineRestart",
    "MachineService",
    "SetSecretsRequest",
    "StopConfig",
    "StopRequest",
    "UpdateMachineRequest",
    "Volume",
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- requests -------------------------------------------------------------------------------


class CreateAppRequest(_Request):
    # The March 2024 spec names it app_name, today's API and fly-go name; both are sent.
    app_name: str
    name: str
    org_slug: str
    network: str | None = None


class SetSecretsRequest(_Request):
    values: dict[str, str]


class IPAssignmentRequest(_Request):
    type: Literal["shared_v4", "v6", "private_v6"]
    network: str | None = None
    org_slug: str | None = None


class MachineGuest(_Request):
    cpu_kind: Literal["shared", "performance"]
    cpus: int
    memory_mb: int


class CreateVolumeRequest(_Request):
    name: str
    region: str
    size_gb: int
    encrypted: bool = True
    compute: MachineGuest | None = None
    require_unique_zone: bool = False


class MachineInit(_Request):
    exec: list[str]


class MachineFile(_Request):
    guest_path: str
    raw_value: str = Field(description="base64 of the file's bytes")


class MachineMount(_Request):
    volume: str
    path: str


class MachinePort(_Request):
    port: int
    handlers: list[str]


class MachineService(_Request):
    protocol: Literal["tcp"] = "tcp"
    internal_port: int
    ports: list[MachinePort]
    # The server decides when a VM sleeps and wakes; the proxy must not do it behind its back.
    autostart: bool = False
    autostop: bool = False


class MachineRestart(_Request):
    policy: Literal["no", "always", "on-failure"]
    max_retries: int | None = None


class StopConfig(_Request):
    signal: str
    timeout: str = Field(description='a Go duration such as "30s" (the wire format)')


class MachineConfig(_Request):
    image: str
    guest: MachineGuest
    env: dict[str, str]
    init: MachineInit
    files: list[MachineFile]
    mounts: list[MachineMount]
    services: list[MachineService]
    restart: MachineRestart
    stop_config: StopConfig
    metadata: dict[str, str]
    auto_destroy: bool = False


class CreateMachineRequest(_Request):
    name: str
    region: str
    config: MachineConfig
    lease_ttl: int | None = None


class UpdateMachineRequest(_Request):
    """An update replaces the whole config (there is no PATCH); it restarts a running Machine."""

    config: MachineConfig
    skip_launch: bool = False


class CreateLeaseRequest(_Request):
    ttl: int
    description: str


class StopRequest(_Request):
    signal: str
    timeout: str


# -- responses ------------------------------------------------------------------------------


class Organization(_Response):
    slug: str = ""
    name: str = ""


class App(_Response):
    id: str = ""
    name: str
    status: str = ""
    organization: Organization | None = None


class ListedApp(_Response):
    id: str = ""
    name: str
    machine_count: int = 0


class Volume(_Response):
    id: str
    name: str = ""
    region: str = ""
    state: str = ""
    size_gb: int = 0
    attached_machine_id: str | None = None
    created_at: str | None = None


class MachineEvent(_Response):
    type: str = ""
    status: str = ""
    source: str = ""
    timestamp: int = 0
    request: Any = None


class Machine(_Response):
    id: str
    name: str = ""
    state: str = ""
    region: str = ""
    instance_id: str = ""
    private_ip: str = ""
    created_at: str | None = None
    updated_at: str | None = None
    nonce: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    events: list[MachineEvent] = Field(default_factory=list)

    @property
    def metadata(self) -> dict[str, str]:
        found = self.config.get("metadata")
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


class Lease(_Response):
    nonce: str
    expires_at: int | None = None
    owner: str = ""
    description: str = ""
