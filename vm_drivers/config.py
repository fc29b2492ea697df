"""One pydantic config per driver, joined in a tagged union on ``type``.

The registry imports a driver only when its config is built (``DRIVER_CLASSES``), so choosing
``local`` never imports the Docker SDK and a missing optional backend costs nothing until it is
asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, field_validator

from guest_runtime.image.rootfs import IMAGE_VERSION, TEMPLATE_PACKAGES

__all__ = [
    "DockerDriverConfig",
    "DockerTemplate",
    "DriverConfig",
    "FirecrackerDriverConfig",
    "FirecrackerJailerConfig",
    "FlyDriverConfig",
    "LimaDriverConfig",
    "LimaTemplate",
    "LocalDriverConfig",
    "ProcessDriverConfig",
    "QemuDriverConfig",
    "QemuTemplate",
    "parse_driver_config",
]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProcessDriverConfig(_Config):
    """The guest agent as a plain subprocess: NO isolation; tests and development only."""

    type: Literal["process"] = "process"
    python: str | None = Field(
        default=None, description="python3 that runs the agent; default: the server's own"
    )
    root_dir: Path | None = Field(
        default=None, description="where workspaces and state live; default DATA_DIR/process"
    )


class LocalDriverConfig(_Config):
    """bubblewrap sandboxes on this host: the zero-setup default on Linux."""

    type: Literal["local"] = "local"
    bwrap: str = Field(default="bwrap", description="bubblewrap executable (name or path)")
    python: str | None = Field(
        default=None,
        description="python3 run inside the sandbox (a path as the sandbox sees it); default: "
        "/usr/bin/python3, else /usr/local/bin/python3",
    )
    root_dir: Path | None = Field(
        default=None, description="where workspaces and sandbox state live; default DATA_DIR/local"
    )
    root: Literal["auto", "image", "host"] = Field(
        default="auto",
        description="what the sandbox's / is: 'image' the runtime image's Debian tree (see "
        "rootfs), 'host' a read-only view of the host's /usr and a few /etc files; 'auto' the "
        "image when its tree has been built, else the host view",
    )
    rootfs: Path | None = Field(
        default=None,
        description="the Debian tree the sandbox runs on; default DATA_DIR/images/trees/runtime "
        "(kept there by `projectvm image build`)",
    )
    uid_base: int = Field(
        default=2_000_000_000,
        ge=65_536,
        le=2**32 - 1 - 65_536,
        description="when the server runs as root: the host uid (and gid) of a sandbox's root; "
        "its uids 0-65535 map to this many and up, never to a host user",
    )
    runtime_dir: Path = Field(
        default=Path("/run/projectvm-local"),
        description="when the server runs as root: where sandboxes are staged (every parent "
        "must be traversable by the uid_base uid)",
    )
    slirp4netns: str = Field(
        default="slirp4netns",
        description="user-mode networking for projects with network egress (each gets a "
        "network namespace of its own; the host's loopback stays unreachable)",
    )
    workspace_disks: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="workspaces as ext4 disk images of max_storage_gb, so the limit is the "
        "filesystem's: 'auto' where the server can mount them (root, loop devices), 'off' "
        "plain directories with the storage guard",
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
        description="host paths never visible in the sandbox; the sandbox only shows the "
        "host's /usr and a few /etc files anyway, so this matters for paths under /usr "
        "(they are covered with an empty directory)",
    )


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
    egress_network: str | None = Field(
        default=None,
        description="network for projects whose settings allow egress; default: a network of "
        "the project's own (labelled, removed with its VM), so no project reaches another's; "
        "a name shares that network between all egress projects",
    )
    workspace_disks: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="workspace volumes bound to ext4 disk images of max_storage_gb, so the "
        "limit is the filesystem's: 'auto' where the server can mount them (root, loop devices, "
        "an engine on this host), 'off' plain volumes with the storage guard",
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


class QemuTemplate(_Config):
    """The machine a project type gets when its settings name none."""

    cpus: int = Field(default=2, ge=1, le=64, description="virtual CPUs")
    memory_mb: int = Field(default=1024, ge=128, description="guest memory in MiB")
    disk_gb: float = Field(default=10, gt=0, description="size of the workspace disk in GB")


def _default_qemu_templates() -> dict[str, QemuTemplate]:
    full = QemuTemplate()
    return {
        "development": full,
        "analysis": full,
        "deployment": full,
        "sandbox": QemuTemplate(cpus=1, memory_mb=512, disk_gb=2),
    }


class QemuDriverConfig(_Config):
    """QEMU ``microvm`` virtual machines: KVM where a guest really boots on it, else TCG."""

    type: Literal["qemu"] = "qemu"
    qemu: str = Field(
        default="qemu-system-x86_64",
        description="QEMU system emulator (name or path); Debian: apt-get install qemu-system-x86",
    )
    images: Path | None = Field(
        default=None,
        description="directory of the boot artifacts (kernel, initramfs, root disk and their "
        "manifest.json); default DATA_DIR/images/current, made by `projectvm image build`",
    )
    accel: Literal["auto", "kvm", "tcg"] = Field(
        default="auto",
        description="auto: KVM only if a timed probe boot proves it works (result cached), "
        "else TCG; kvm or tcg force one",
    )
    templates: dict[str, QemuTemplate] = Field(
        default_factory=_default_qemu_templates,
        description="per project type: CPUs, memory and disk size when the project sets none; "
        "'development' is the fallback",
    )
    boot_timeout_s: float = Field(
        default=60, gt=0, description="how long a booting VM may take to answer (TCG is slow)"
    )
    kvm_probe_timeout_s: float = Field(
        default=10, gt=0, description="how long the KVM probe guest may take to reach init"
    )
    stop_timeout_s: float = Field(
        default=20,
        gt=0,
        description="how long a VM may take to flush and power off after being asked to",
    )
    runtime_dir: Path | None = Field(
        default=None,
        description="where the VMs' sockets and pidfiles live (a short path: unix socket paths "
        "are limited to 107 bytes); default /run/projectvm as root, else "
        "$XDG_RUNTIME_DIR/projectvm or /tmp/projectvm-<uid>",
    )
    extra_kernel_args: str = Field(
        default="",
        description="appended to the guest kernel command line (debugging, e.g. 'loglevel=7')",
    )
    console_log_bytes: int = Field(
        default=1024 * 1024,
        ge=4096,
        description="the console log of a VM is cut back to its tail beyond this size",
    )

    @field_validator("templates")
    @classmethod
    def _has_development(cls, value: dict[str, QemuTemplate]) -> dict[str, QemuTemplate]:
        if "development" not in value:
            raise ValueError("templates must include 'development' (the fallback)")
        return value


class FirecrackerJailerConfig(_Config):
    """Run each Firecracker under Firecracker's jailer (chroot, own uid/gid, cgroup); root only."""

    binary: str = Field(default="jailer", description="jailer executable (name or path)")
    chroot_base_dir: Path = Field(
        default=Path("/srv/jailer"),
        description="where the jailer makes each VM's chroot (<base>/<exec name>/<id>/root); "
        "must be on the data directory's filesystem (data disks are hard-linked in) and short "
        "enough for unix socket paths",
    )
    uid: int = Field(default=65534, ge=0, description="user Firecracker runs as in the jail")
    gid: int = Field(default=65534, ge=0, description="group Firecracker runs as in the jail")
    cgroup_version: Literal[1, 2] = Field(
        default=2, description="the host's cgroup hierarchy: 1 or 2 (unified)"
    )
    parent_cgroup: str | None = Field(
        default=None, description="cgroup the jailed VMs are placed under; default: the jailer's"
    )


class FirecrackerDriverConfig(_Config):
    """Firecracker microVMs through Firecracker's API socket: needs /dev/kvm that boots guests."""

    type: Literal["firecracker"] = "firecracker"
    binary: str = Field(
        default="firecracker",
        description="firecracker executable (name on PATH, or a path); version 1.8 or later",
    )
    images_dir: Path | None = Field(
        default=None,
        description="the boot artifacts (vmlinux, initramfs, rootfs, manifest.json) when not "
        "set one by one; default DATA_DIR/images/current, made by `projectvm image build`",
    )
    kernel: Path | None = Field(
        default=None, description="uncompressed ELF vmlinux; default IMAGES_DIR/vmlinux"
    )
    initramfs: Path | None = Field(
        default=None,
        description="initramfs that mounts the disks and starts the agent on vsock; default "
        "IMAGES_DIR/initramfs.cpio.gz",
    )
    rootfs: Path | None = Field(
        default=None,
        description="read-only ext4 root filesystem (label pvm-root) shared by all VMs; "
        "default IMAGES_DIR/rootfs.ext4",
    )
    runtime_dir: Path | None = Field(
        default=None,
        description="short directory for per-VM sockets; default /run/projectvm-fc as root, "
        "else $XDG_RUNTIME_DIR/projectvm-fc or /tmp/projectvm-fc-<uid>",
    )
    vcpus: int = Field(
        default=2, ge=1, le=32, description="vCPUs when the project sets none (1 or even)"
    )
    memory_mb: int = Field(default=1024, ge=128, description="memory when the project sets none")
    disk_gb: float = Field(
        default=10, gt=0, description="data disk size when the project sets none (sparse)"
    )
    agent_port: int = Field(
        default=52, ge=1, lt=2**32, description="vsock port the guest agent listens on"
    )
    extra_boot_args: str = Field(
        default="", description="appended to the kernel command line the driver builds"
    )
    boot_timeout_s: float = Field(
        default=30, gt=0, description="from InstanceStart to the agent's hello, at most"
    )
    api_timeout_s: float = Field(
        default=10, gt=0, description="timeout of one call to Firecracker's API"
    )
    stop_timeout_s: float = Field(
        default=10,
        gt=0,
        description="grace after asking the agent to shut down, and again after Ctrl-Alt-Del, "
        "before the VMM is killed",
    )
    probe_timeout_s: float = Field(
        default=30, gt=0, description="how long the boot probe waits for a test VM's hello"
    )
    log_level: Literal["Error", "Warning", "Info", "Debug", "Trace", "Off"] = Field(
        default="Warning", description="Firecracker's own log level"
    )
    metrics: bool = Field(
        default=False, description="have Firecracker write metrics into the runtime directory"
    )
    console_log_bytes: int = Field(
        default=1024 * 1024,
        ge=4096,
        description="most bytes of serial console and VMM output kept per VM",
    )
    egress_subnet: str = Field(
        default="172.30.0.0/16",
        description="addresses for tap devices of projects that allow egress (a /30 each)",
    )
    jailer: FirecrackerJailerConfig | None = Field(
        default=None, description="run Firecracker under the jailer; null = run it directly"
    )

    @field_validator("vcpus")
    @classmethod
    def _one_or_even(cls, value: int) -> int:
        if value != 1 and value % 2:
            raise ValueError("Firecracker takes 1 vCPU or an even number of them")
        return value


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
        default_factory=lambda: (
            f"{os.environ['FLY_APP_NAME']}-" if os.environ.get("FLY_APP_NAME") else "pvm-"
        ),
        description="prefix of app names (the instance id and project follow it); default "
        "FLY_APP_NAME followed by '-', else 'pvm-'",
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


DriverConfig = Annotated[
    LocalDriverConfig
    | DockerDriverConfig
    | ProcessDriverConfig
    | QemuDriverConfig
    | FirecrackerDriverConfig
    | LimaDriverConfig
    | FlyDriverConfig,
    Field(discriminator="type"),
]

_ADAPTER: TypeAdapter[DriverConfig] = TypeAdapter(DriverConfig)


def parse_driver_config(data: dict[str, object]) -> DriverConfig:
    """Validate a driver config from a mapping such as ``{"type": "local"}``."""
    return _ADAPTER.validate_python(data)
