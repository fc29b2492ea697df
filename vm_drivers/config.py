"""One pydantic config per driver, joined in a tagged union on ``type``.

Each config imports its driver only when ``build`` is called, so choosing ``local`` never imports
the Docker SDK and a missing optional backend costs nothing until it is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, field_validator

from guest_runtime.image.rootfs import IMAGE_VERSION
from vm_drivers.base import DriverContext

if TYPE_CHECKING:
    from vm_drivers.base import VMDriver

__all__ = [
    "DockerDriverConfig",
    "DockerTemplate",
    "DriverConfig",
    "FlyDriverConfig",
    "LocalDriverConfig",
    "parse_driver_config",
]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalDriverConfig(_Config):
    """bubblewrap sandboxes on this host: the zero-setup default on Linux."""

    type: Literal["local"] = "local"
    bwrap: str = Field(default="bwrap", description="bubblewrap executable (name or path)")
    python: str | None = Field(
        default=None,
        description="python3 run inside the sandbox; default: the first system python3 that "
        "is visible inside it (/usr/bin, /usr/local/bin)",
    )
    root_dir: Path | None = Field(
        default=None, description="where workspaces and sandbox state live; default DATA_DIR/local"
    )
    pids_limit: int | None = Field(
        default=1024,
        description="processes per sandbox when the project sets none (a cgroup limit: "
        "contains fork bombs); needs permission to create cgroups",
    )
    memory_mb: int | None = Field(
        default=None, description="memory per sandbox when the project sets none; null = none"
    )
    cpus: float | None = Field(
        default=None, description="CPU per sandbox when the project sets none; null = none"
    )
    hidden_paths: list[str] = Field(
        default_factory=lambda: ["/home", "/root", "/run", "/tmp", "/mnt", "/media", "/srv"],
        description="host directories not visible in the sandbox (the rest of / is read-only); "
        "ProjectVM's own data directory is always hidden",
    )

    def build(self, context: DriverContext) -> VMDriver:
        from vm_drivers.local import LocalDriver

        return LocalDriver(self, context)


class DockerTemplate(_Config):
    """The image and default limits a project type gets."""

    image: str = Field(description="image reference, e.g. projectvm/runtime:1")
    cpus: float = Field(default=2, gt=0, description="CPU limit when the project sets none")
    memory_mb: int = Field(
        default=2048, gt=0, description="memory limit when the project sets none"
    )
    pids_limit: int = Field(default=1024, gt=0, description="process limit (contains fork bombs)")


def _default_templates() -> dict[str, DockerTemplate]:
    image = f"projectvm/runtime:{IMAGE_VERSION}"
    full = DockerTemplate(image=image)
    return {
        "development": full,
        "analysis": full,
        "deployment": full,
        "sandbox": DockerTemplate(image=image, cpus=1, memory_mb=512, pids_limit=256),
    }


class DockerDriverConfig(_Config):
    """Containers through the Docker Engine API: Docker, Podman's service, Colima."""

    type: Literal["docker"] = "docker"
    base_url: str | None = Field(
        default=None,
        description="engine address (unix:///path or tcp://host:port); default DOCKER_HOST, "
        "else the platform's default socket",
    )
    templates: dict[str, DockerTemplate] = Field(
        default_factory=_default_templates,
        description="per project type: image and default limits; 'development' is the fallback",
    )
    egress_network: str = Field(
        default="bridge", description="network for projects whose settings allow egress"
    )
    nofile_limit: int | None = Field(
        default=None,
        description="open-files ulimit in containers; default: the engine's; must not exceed "
        "the engine's own hard limit or containers fail to start",
    )
    nproc_limit: int | None = Field(
        default=None,
        description="processes ulimit in containers; default: the engine's (the pids limit is "
        "what contains a fork bomb)",
    )
    api_timeout_s: float = Field(default=120, gt=0, description="timeout of one engine API call")
    stop_timeout_s: int = Field(
        default=5, ge=0, description="grace before a stopping container is killed"
    )

    @field_validator("templates")
    @classmethod
    def _has_development(cls, value: dict[str, DockerTemplate]) -> dict[str, DockerTemplate]:
        if "development" not in value:
            raise ValueError("templates must include 'development' (the fallback)")
        return value

    def build(self, context: DriverContext) -> VMDriver:
        from vm_drivers.docker import DockerDriver

        return DockerDriver(self, context)


class FlyDriverConfig(_Config):
    """Fly Machines through the Machines API: the production engine.

    Layout: **one Fly app per project** (``<app_prefix><instance id>-<project id>``), on its own
    private network, holding one Machine and one volume at /workspace. Per project: its own
    secrets (the agent's bearer token is an app secret), its own 6PN network, and one delete
    removes everything. The cost: app creation is slower than a Machine's and app names are
    global across Fly. (One app per installation would be faster to provision, but every Machine
    would see every secret and reach every other project's VM on the shared network.)
    """

    type: Literal["fly"] = "fly"
    api_base_url: str | None = Field(
        default=None,
        description="Machines API base URL; default FLY_FLAPS_BASE_URL, else the public API",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="API token (an org token: the driver creates apps); default FLY_API_TOKEN; "
        "never logged or shown",
    )
    org_slug: str = Field(default="personal", description="the Fly organisation apps go in")
    region: str = Field(
        default="iad",
        description="region for new volumes; a Machine always goes where its volume landed",
    )
    image: str = Field(
        default=f"registry.fly.io/projectvm-runtime:{IMAGE_VERSION}",
        description="registry reference of the project image (any image with python3 in PATH); "
        "pin it by digest in production",
    )
    app_prefix: str = Field(
        default="pvm-", description="prefix of app names; the instance id follows it"
    )
    cpu_kind: Literal["shared", "performance"] = Field(
        default="shared", description="Fly CPU class of project Machines"
    )
    cpus: float = Field(default=1, gt=0, description="CPUs when the project sets none")
    memory_mb: int = Field(default=1024, gt=0, description="memory when the project sets none")
    disk_gb: int = Field(
        default=10, gt=0, description="workspace volume size when the project sets none"
    )
    agent_port: int = Field(default=8080, gt=0, lt=65536, description="agent's internal port")
    proxy_url: str = Field(
        default="wss://{app}.fly.dev/rpc",
        description="the agent's WebSocket through Fly Proxy; {app} is the app name",
    )
    proxy_address: str | None = Field(
        default=None,
        description="HOST:PORT to dial instead of proxy_url's host (Host header unchanged), "
        "e.g. a local proxy",
    )
    assign_public_ips: bool = Field(
        default=True,
        description="give each app a shared IPv4 and an IPv6, so Fly Proxy routes to it",
    )
    lease_ttl_s: int = Field(default=30, ge=1, description="lease held around each mutation")
    lease_wait_s: float = Field(
        default=60, ge=0, description="how long to wait for a lease someone else holds"
    )
    wait_timeout_s: int = Field(
        default=20, ge=1, le=60, description="one wait request's timeout (the API caps it at 60)"
    )
    start_timeout_s: float = Field(
        default=180, gt=0, description="how long a Machine may take to reach a state"
    )
    channel_timeout_s: float = Field(
        default=60, gt=0, description="how long to keep trying to reach the agent after start"
    )
    api_timeout_s: float = Field(default=30, gt=0, description="timeout of one API request")
    retry_attempts: int = Field(default=4, ge=1, description="tries of a repeatable request")
    retry_initial_s: float = Field(default=0.2, ge=0, description="first retry backoff")
    retry_max_s: float = Field(default=5, ge=0, description="longest retry backoff")
    rate_limit_wait_s: float = Field(
        default=1.0, ge=0, description="least wait after a 429 (Fly: ~1 request/s per action)"
    )
    stop_timeout_s: int = Field(
        default=30, ge=1, description="grace the agent gets to stop before it is killed"
    )
    state_dir: Path | None = Field(
        default=None,
        description="the driver's private state (VM records, agent tokens at 0600); "
        "default DATA_DIR/fly",
    )

    def build(self, context: DriverContext) -> VMDriver:
        from vm_drivers.fly.driver import FlyDriver

        return FlyDriver(self, context)


DriverConfig = Annotated[
    LocalDriverConfig | DockerDriverConfig | FlyDriverConfig, Field(discriminator="type")
]

_ADAPTER: TypeAdapter[DriverConfig] = TypeAdapter(DriverConfig)


def parse_driver_config(data: dict[str, object]) -> DriverConfig:
    """Validate a driver config from a mapping such as ``{"type": "local"}``."""
    return _ADAPTER.validate_python(data)
