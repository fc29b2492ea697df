"""One pydantic config per driver, joined in a tagged union on ``type``.

Each config imports its driver only when ``build`` is called, so choosing ``local`` never imports
the Docker SDK and a missing optional backend costs nothing until it is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from guest_runtime.image.rootfs import IMAGE_VERSION, TEMPLATE_PACKAGES
from vm_drivers.base import DriverContext

if TYPE_CHECKING:
    from vm_drivers.base import VMDriver

__all__ = [
    "DockerDriverConfig",
    "DockerTemplate",
    "DriverConfig",
    "LimaDriverConfig",
    "LimaTemplate",
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


class LimaTemplate(_Config):
    """What a project type gets as a Lima instance (per-project mode)."""

    base: str = Field(
        default="template:_images/debian-12",
        description="Lima base template giving the image (a project's own image setting wins)",
    )
    cpus: int = Field(default=2, gt=0, description="virtual CPUs when the project sets none")
    memory_gib: float = Field(default=4, gt=0, description="memory when the project sets none")
    disk_gib: float = Field(
        default=50, gt=0, description="disk (the workspace lives on it) when the project sets none"
    )
    packages: list[str] = Field(
        default_factory=lambda: list(TEMPLATE_PACKAGES["runtime"]),
        description="packages the provisioning script installs when missing (apt or dnf)",
    )


def _default_lima_templates() -> dict[str, LimaTemplate]:
    full = LimaTemplate()
    return {
        "development": full,
        "analysis": full,
        "deployment": full,
        "sandbox": LimaTemplate(
            cpus=1, memory_gib=1, disk_gib=20, packages=list(TEMPLATE_PACKAGES["minimal"])
        ),
    }


class LimaDriverConfig(_Config):
    """Lima 2.x VMs through ``limactl``: an instance per project, or sandboxes in a shared one."""

    type: Literal["lima"] = "lima"
    limactl: str = Field(default="limactl", description="limactl executable (name or path)")
    lima_home: Path | None = Field(
        default=None,
        description="LIMA_HOME for limactl; default: limactl's own (LIMA_HOME, else ~/.lima). "
        "Keep it short: Lima's socket paths under it must fit in 104 bytes",
    )
    shared_instance: str | None = Field(
        default_factory=lambda: os.environ.get("LIMA_INSTANCE") or None,
        description="run every project as a sandbox in this existing instance instead of one "
        "instance per project; default: the LIMA_INSTANCE environment variable",
    )
    shared_root: str = Field(
        default="~/projectvm",
        description="directory in the shared instance that holds the projects' workspaces",
    )
    shared_sandbox: Literal["auto", "bwrap", "none"] = Field(
        default="auto",
        description="confinement in the shared instance: bwrap (required), auto (bwrap when the "
        "instance has it) or none (file calls stay in the workspace, commands do not)",
    )
    instance_prefix: str = Field(
        default="pvm-",
        pattern=r"^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*[._-]$",
        description="prefix of the instances this driver creates (gc looks for it)",
    )
    templates: dict[str, LimaTemplate] = Field(
        default_factory=_default_lima_templates,
        description="per project type: image, default resources, packages; 'development' is the "
        "fallback",
    )
    vm_type: Literal["qemu", "vz", "krunkit"] | None = Field(
        default=None, description="Lima VM type; default: Lima's (vz on macOS 13.5+, else qemu)"
    )
    create_timeout_s: float = Field(
        default=1800, gt=0, description="first start of a new instance (downloads its image)"
    )
    start_timeout_s: float = Field(default=600, gt=0, description="start of an existing instance")
    stop_timeout_s: float = Field(
        default=240, gt=0, description="graceful stop before the driver forces it"
    )
    command_timeout_s: float = Field(
        default=120, gt=0, description="any other limactl call (list, copy, edit, delete, shell)"
    )

    @field_validator("templates")
    @classmethod
    def _has_development(cls, value: dict[str, LimaTemplate]) -> dict[str, LimaTemplate]:
        if "development" not in value:
            raise ValueError("templates must include 'development' (the fallback)")
        return value

    def build(self, context: DriverContext) -> VMDriver:
        from vm_drivers.lima import LimaDriver

        return LimaDriver(self, context)


DriverConfig = Annotated[
    LocalDriverConfig | DockerDriverConfig | LimaDriverConfig, Field(discriminator="type")
]

_ADAPTER: TypeAdapter[DriverConfig] = TypeAdapter(DriverConfig)


def parse_driver_config(data: dict[str, object]) -> DriverConfig:
    """Validate a driver config from a mapping such as ``{"type": "local"}``."""
    return _ADAPTER.validate_python(data)
