"""The ``docker`` driver: each project VM is a container, through the Docker Engine API.

Works with Docker Engine, Podman's Docker-compatible service and Colima (``DOCKER_HOST`` or the
default socket). One container per project runs a tiny init; the workspace is a named volume at
``/workspace``, so it survives stop/start and the container being deleted and re-created (the
volume's labels keep the spec to re-create it from). The guest agent is copied in and runs as
**one long-lived exec with attached stdio**: that stream is the channel for every call.

Commands never share the agent's identity: the agent runs as root and starts every command as
uid/gid 1000 (``--run-as``; a ``pvm`` user is added to images that have no uid 1000), and
hands the workspace volume over to that uid. The agent's code lives in ``/.projectvm``, owned
by root (0755, files 0644), so no command can change it; PID 1 (the init) never holds the
channel, which is the agent's own exec stream.

Where the server can mount and the engine runs on this host, the volume binds an ext4 disk
image of ``max_storage_gb`` (:mod:`vm_drivers.kit.workspace_disk`), so the storage limit is the
filesystem's. A project with egress gets a bridge network of its own, so no project reaches
another's container; both are labelled like the container and go with it.

The ``docker`` package is synchronous: every call runs in a worker thread. Its errors are
translated to the driver error tree here, at the boundary.
"""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import ssl
import tarfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import anyio
import anyio.abc
import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import Ulimit

from guest_runtime.bundle import agent_zipapp, agent_zipapp_digest
from vm_drivers.base import (
    LABEL_PROJECT,
    LABEL_VM,
    Availability,
    DriverContext,
    VMCreationResult,
    VMDriver,
    VMInfo,
    VMSpec,
    VMStatus,
)
from vm_drivers.config import DockerDriverConfig, DockerTemplate
from vm_drivers.docker_guard import ContainerStorageWatch
from vm_drivers.errors import (
    DriverConfigError,
    DriverError,
    DriverTimeout,
    DriverUnavailable,
    GuestUnreachable,
    VMCreationFailed,
    VMNotFound,
    VMOperationFailed,
    VMResourceExhausted,
)
from vm_drivers.kit.channels import ChannelSlots
from vm_drivers.kit.lifecycle import ClosingDriver
from vm_drivers.kit.locks import KeyedLocks
from vm_drivers.kit.naming import VM_PREFIX, vm_id_for
from vm_drivers.kit.streams import MultiplexedStream
from vm_drivers.kit.workspace_disk import GIB, WorkspaceDisk, disk_bytes, disk_support

__all__ = ["ERROR_TRANSLATIONS", "DockerDriver", "translate_docker_error"]

T = TypeVar("T")

log = logging.getLogger("projectvm.drivers.docker")

WORKSPACE = "/workspace"
AGENT_DIR = "/.projectvm"
INIT_PATH = f"{AGENT_DIR}/init.pyz"
# Who commands run as (the agent stays root): never the agent's own uid.
COMMAND_UID_GID = "1000:1000"
# Gives uid 1000 a name where the image has none for it (idempotent; run as root at start).
COMMAND_USER_SETUP = (
    "grep -q '^[^:]*:[^:]*:1000:' /etc/passwd || "
    "echo 'pvm:x:1000:1000:ProjectVM commands:/workspace:/bin/sh' >> /etc/passwd; "
    "grep -q '^[^:]*:[^:]*:1000:' /etc/group || echo 'pvm:x:1000:' >> /etc/group"
)
LABEL_SPEC = "projectvm.spec"
LABEL_DISK = "projectvm.disk"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# The Engine API version spoken: served by Docker 20.10+ and Podman 4+.
API_VERSION = "1.41"
ENGINE_HINT = (
    "start Docker (or `podman system service unix:///run/podman/podman.sock` with "
    "DOCKER_HOST=unix:///run/podman/podman.sock), or choose another driver"
)

# Every exception the docker SDK (and requests under it) can raise, and what it means here.
ERROR_TRANSLATIONS: dict[type[BaseException], type[DriverError]] = {
    docker.errors.ImageNotFound: VMCreationFailed,
    docker.errors.NotFound: VMNotFound,
    docker.errors.APIError: VMOperationFailed,
    docker.errors.ContainerError: VMOperationFailed,
    docker.errors.BuildError: VMCreationFailed,
    docker.errors.ImageLoadError: VMCreationFailed,
    docker.errors.StreamParseError: VMOperationFailed,
    docker.errors.DeprecatedMethod: VMOperationFailed,
    docker.errors.NullResource: DriverConfigError,
    docker.errors.InvalidArgument: DriverConfigError,
    docker.errors.InvalidVersion: DriverConfigError,
    docker.errors.InvalidRepository: DriverConfigError,
    docker.errors.InvalidConfigFile: DriverConfigError,
    docker.errors.TLSParameterError: DriverConfigError,
    docker.errors.MissingContextParameter: DriverConfigError,
    docker.errors.ContextAlreadyExists: DriverConfigError,
    docker.errors.ContextNotFound: DriverConfigError,
    docker.errors.ContextException: DriverConfigError,
    docker.errors.DockerException: VMOperationFailed,
    requests.exceptions.Timeout: DriverTimeout,
    requests.exceptions.ConnectionError: DriverUnavailable,
    requests.exceptions.RequestException: VMOperationFailed,
}


def translate_docker_error(err: BaseException, action: str) -> DriverError:
    """The driver error for a docker SDK exception raised while doing ``action``."""
    target = next(
        (ERROR_TRANSLATIONS[cls] for cls in type(err).__mro__ if cls in ERROR_TRANSLATIONS),
        VMOperationFailed,
    )
    detail = getattr(err, "explanation", None) or str(err) or type(err).__name__
    if isinstance(err, docker.errors.APIError):
        lowered = str(detail).lower()
        if "no space left" in lowered or "out of memory" in lowered or "quota" in lowered:
            target = VMResourceExhausted
    if target is DriverUnavailable:
        return DriverUnavailable("docker", f"the engine did not answer ({detail})", ENGINE_HINT)
    if target is VMNotFound:
        return VMNotFound(f"{action} failed: not found ({detail})")
    return target(f"{action} failed: {detail}")


def _tar_of(files: dict[str, bytes]) -> bytes:
    """The agent's files under ``/.projectvm``: a root-owned 0755 directory, 0644 files."""
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        directory = tarfile.TarInfo(AGENT_DIR.lstrip("/"))
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        directory.mtime = now
        archive.addfile(directory)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = now
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class DockerDriver(ClosingDriver):
    name: ClassVar[str] = "docker"

    def __init__(self, config: DockerDriverConfig, context: DriverContext) -> None:
        self.config = config
        self.context = context
        self._client: docker.DockerClient | None = None
        self._lock = KeyedLocks()
        self._channels = ChannelSlots()
        self._watches: dict[str, ContainerStorageWatch] = {}

    # -- plumbing -----------------------------------------------------------------------------

    async def _call(self, action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def call() -> T:
            return fn(*args, **kwargs)

        try:
            return await anyio.to_thread.run_sync(call)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as err:
            raise translate_docker_error(err, action) from err

    def _engine_socket(self) -> str | None:
        """The unix socket the engine should answer on, if it is a unix one."""
        url = self.config.base_url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET
        for prefix in ("unix://", "http+unix://"):
            if url.startswith(prefix):
                return url[len(prefix) :]
        return None

    async def _check_engine_socket(self) -> None:
        """Fail fast, and without leaking, when nothing listens on the engine's socket (the
        docker SDK leaves such a failed socket open)."""
        path = self._engine_socket()
        if path is None:
            return
        try:
            stream = await anyio.connect_unix(path)
        except OSError as err:
            raise DriverUnavailable(
                "docker", f"no engine answers at unix://{path} ({err.strerror})", ENGINE_HINT
            ) from err
        await stream.aclose()

    async def client(self) -> docker.DockerClient:
        if self._client is None:
            await self._check_engine_socket()
            options: dict[str, Any] = {
                "timeout": int(self.config.api_timeout_s),
                "max_pool_size": 32,
                # A fixed API version: building the client does no I/O (version negotiation
                # would connect, and leak the socket when no engine answers).
                "version": API_VERSION,
            }
            if self.config.base_url:
                options["base_url"] = self.config.base_url
            factory = docker.DockerClient if self.config.base_url else docker.from_env
            try:
                self._client = await self._call("connecting to the engine", factory, **options)
            except DriverUnavailable:
                raise
            except DriverError as err:
                where = (
                    self.config.base_url or os.environ.get("DOCKER_HOST") or "the default socket"
                )
                raise DriverUnavailable(
                    "docker", f"no engine answers at {where} ({err})", ENGINE_HINT
                ) from err
        return self._client

    @staticmethod
    def _volume_name(vm_id: str) -> str:
        return f"{vm_id}-workspace"

    def template(self, project_type: str) -> DockerTemplate:
        templates = self.config.templates
        return templates.get(project_type) or templates["development"]

    async def _container(self, vm_id: str) -> Container | None:
        client = await self.client()
        try:
            return await self._call(f"inspecting {vm_id}", client.containers.get, vm_id)
        except VMNotFound:
            return None

    async def _volume_spec(self, vm_id: str) -> VMSpec | None:
        client = await self.client()
        try:
            volume = await self._call(
                f"inspecting the workspace of {vm_id}",
                client.volumes.get,
                self._volume_name(vm_id),
            )
        except VMNotFound:
            return None
        labels = volume.attrs.get("Labels") or {}
        try:
            return VMSpec.model_validate_json(labels[LABEL_SPEC])
        except (KeyError, ValueError) as err:
            raise VMOperationFailed(
                f"the workspace volume of {vm_id} has no usable spec label ({err}); it was not "
                "made by this ProjectVM"
            ) from err

    # -- workspace disks and networks ---------------------------------------------------------

    def _disk(self, vm_id: str) -> WorkspaceDisk:
        disks = self.context.data_dir / "docker" / "disks"
        return WorkspaceDisk(disks / f"{vm_id}.ext4", disks / vm_id)

    async def _disks_wanted(self) -> bool:
        if self.config.workspace_disks != "auto":
            return self.config.workspace_disks == "on"
        if not (await anyio.to_thread.run_sync(disk_support)).usable:
            return False
        # The engine must see this host's mounts: a local socket, its storage on this host.
        if self._engine_socket() is None:
            return False
        client = await self.client()
        info = await self._call("asking the engine about itself", client.info)
        return await anyio.Path(str(info.get("DockerRootDir") or "/nonexistent")).is_dir()

    async def _create_volume(self, vm_id: str, spec: VMSpec) -> None:
        client = await self.client()
        labels = self._labels(spec, vm_id)
        options: dict[str, Any] = {}
        if spec.disk_gb and await self._disks_wanted():
            disk = self._disk(vm_id)
            await anyio.to_thread.run_sync(disk.ensure, disk_bytes(spec.disk_gb), None)
            labels[LABEL_DISK] = str(disk.image)
            options = {"driver": "local", "driver_opts": _bind_options(disk.mount_point)}
        await self._call(
            f"creating the workspace volume of {vm_id}",
            client.volumes.create,
            name=self._volume_name(vm_id),
            labels=labels,
            **options,
        )

    async def _mount_disk(self, vm_id: str, spec: VMSpec | None, running: bool) -> None:
        """Before a container starts: its workspace disk mounted (after a reboot too) and as
        large as the spec asks (a ``running`` one's grows when it can). A volume made without
        a disk stays without one."""
        client = await self.client()
        try:
            volume = await self._call(
                f"inspecting the workspace of {vm_id}",
                client.volumes.get,
                self._volume_name(vm_id),
            )
        except VMNotFound:
            return
        labels = volume.attrs.get("Labels") or {}
        if LABEL_DISK not in labels:
            return
        spec = spec or await self._volume_spec(vm_id)
        disk = self._disk(vm_id)
        if not disk.exists():
            raise VMOperationFailed(
                f"the workspace disk of {vm_id} is missing at {disk.image}; the workspace is "
                "lost: delete the project and create it again"
            )
        size = disk_bytes(spec.disk_gb) if spec is not None and spec.disk_gb else 0
        # Unmounting to grow is safe: if the engine still holds the disk elsewhere, the disk
        # sees it attached and does not grow it now.
        later = await anyio.to_thread.run_sync(lambda: disk.ensure(size, None, in_use=running))
        if later:
            log.warning("%s", later)

    async def _check_disk(self, vm_id: str, container: Container) -> None:
        """The running container's /workspace must be the disk, not the directory under it (an
        engine in another mount namespace would bind the empty directory: no limit at all)."""
        disk = self._disk(vm_id)
        if not disk.exists():
            return
        await self._call(f"inspecting {vm_id}", container.reload)
        pid = int((container.attrs.get("State") or {}).get("Pid") or 0)
        if pid <= 0:
            return  # it is not running (it exited at once): nothing can write, starting fails
        want = (await anyio.Path(disk.mount_point).stat()).st_dev
        seen = await anyio.to_thread.run_sync(_workspace_device, pid)
        if seen != f"{os.major(want)}:{os.minor(want)}":
            await self._call(f"stopping {vm_id}", container.stop, timeout=0)
            raise VMOperationFailed(
                f"the engine does not see the workspace disk mounted at {disk.mount_point} "
                f"(the container's /workspace is on {seen or 'an unknown device'}); it runs "
                "elsewhere than this server: set the docker driver's workspace_disks to 'off'"
            )

    async def _watch(self, vm_id: str) -> None:
        """A running container whose workspace is not a disk gets the storage guard."""
        current = self._watches.get(vm_id)
        if (current is not None and current.running()) or self._disk(vm_id).exists():
            return
        container = await self._container(vm_id)
        spec = self._spec_of(container) if container is not None else None
        if container is None or spec is None or not spec.disk_gb:
            return
        watch = ContainerStorageWatch(container, int(spec.disk_gb * GIB))
        watch.start()
        self._watches[vm_id] = watch

    def _unwatch(self, vm_id: str) -> None:
        watch = self._watches.pop(vm_id, None)
        if watch is not None:
            watch.stop()

    async def _network(self, vm_id: str, spec: VMSpec) -> dict[str, Any]:
        """The container's network options: none, or the project's own bridge network."""
        if spec.network != "egress":
            return {"network_mode": "none"}
        if self.config.egress_network:
            return {"network": self.config.egress_network}
        client = await self.client()
        name = _network_name(vm_id)
        labels = {**spec.labels, **self.context.labels(spec.project_id, vm_id)}
        try:
            await self._call(f"finding the network of {vm_id}", client.networks.get, name)
        except VMNotFound:
            try:
                await self._call(
                    f"creating the network of {vm_id}",
                    client.networks.create,
                    name,
                    driver="bridge",
                    labels=labels,
                    check_duplicate=True,
                )
            except VMOperationFailed:
                # Made meanwhile by another server of this installation: use it.
                await self._call(f"finding the network of {vm_id}", client.networks.get, name)
        return {"network": name}

    async def _remove_network(self, vm_id: str) -> None:
        client = await self.client()
        try:
            network = await self._call(
                f"finding the network of {vm_id}", client.networks.get, _network_name(vm_id)
            )
            await self._call(f"removing the network of {vm_id}", network.remove)
        except VMNotFound:
            pass

    # -- containers ---------------------------------------------------------------------------

    def _labels(self, spec: VMSpec, vm_id: str) -> dict[str, str]:
        return {
            **spec.labels,
            **self.context.labels(spec.project_id, vm_id),
            LABEL_SPEC: spec.model_dump_json(),
        }

    async def _create_container(self, vm_id: str, spec: VMSpec) -> Container:
        client = await self.client()
        template = self.template(spec.project_type)
        image = spec.image or template.image
        cpus = spec.cpus or template.cpus
        memory_mb = spec.memory_mb or template.memory_mb
        ulimits = [
            Ulimit(name=name, soft=value, hard=value)
            for name, value in (
                ("nofile", self.config.nofile_limit),
                ("nproc", self.config.nproc_limit),
            )
            if value is not None
        ]
        network = await self._network(vm_id, spec)
        container = await self._call(
            f"creating container {vm_id}",
            client.containers.create,
            image,
            command=["python3", INIT_PATH, "--init"],
            name=vm_id,
            hostname=f"pvm-{spec.project_id[-12:]}",
            labels=self._labels(spec, vm_id),
            volumes={self._volume_name(vm_id): {"bind": WORKSPACE, "mode": "rw"}},
            working_dir=WORKSPACE,
            environment={
                "HOME": WORKSPACE,
                "LANG": "C.UTF-8",
                "PROJECTVM_PROJECT_ID": spec.project_id,
            },
            nano_cpus=int(cpus * 1e9),
            mem_limit=f"{memory_mb}m",
            pids_limit=spec.pids_limit or template.pids_limit,
            ulimits=ulimits or None,
            security_opt=["no-new-privileges"],
            stop_signal="SIGTERM",
            detach=True,
            **network,
        )
        await self._call(
            f"copying the init into {vm_id}",
            container.put_archive,
            "/",
            _tar_of({INIT_PATH.lstrip("/"): agent_zipapp()}),
        )
        return container

    async def _inject_agent(self, container: Container) -> str:
        """Copy the current guest agent in (idempotent); return its path in the container."""
        path = f"{AGENT_DIR}/agent-{agent_zipapp_digest()}.pyz"
        await self._call(
            f"copying the guest agent into {container.name}",
            container.put_archive,
            "/",
            _tar_of({path.lstrip("/"): agent_zipapp()}),
        )
        return path

    async def _start(self, container: Container) -> None:
        await self._call(f"starting {container.name}", container.start)
        exit_code, output = await self._call(
            f"naming the command user in {container.name}",
            container.exec_run,
            ["sh", "-c", COMMAND_USER_SETUP],
            user="0",
        )
        if exit_code:  # only a name is missing then: commands still run as uid 1000
            log.warning(
                "could not name uid 1000 in %s (status %s): %s",
                container.name,
                exit_code,
                output.decode(errors="replace").strip()[:200],
            )

    # -- VMDriver -----------------------------------------------------------------------------

    async def create_project_vm(self, spec: VMSpec) -> VMCreationResult:
        vm_id = vm_id_for(spec.project_id)
        client = await self.client()
        image = spec.image or self.template(spec.project_type).image
        try:
            await self._call(f"looking up image {image}", client.images.get, image)
        except (VMNotFound, VMCreationFailed) as err:
            raise VMCreationFailed(
                f"the image {image} is not available to the engine; build it with "
                "`projectvm image build` (no registry needed) or pull it"
            ) from err
        async with self._lock(vm_id):
            try:
                await self._create_volume(vm_id, spec)
                container = await self._create_container(vm_id, spec)
                await self._start(container)
                await self._check_disk(vm_id, container)
            except DriverError as err:
                with anyio.CancelScope(shield=True):
                    await self._remove(vm_id)
                raise VMCreationFailed(f"could not create VM {vm_id}: {err}") from err
        return VMCreationResult(
            vm_id=vm_id,
            status=VMStatus.RUNNING,
            workspace_path=f"volume:{self._volume_name(vm_id)}",
            details={"image": image},
        )

    async def start_project_vm(self, vm_id: str, spec: VMSpec | None = None) -> None:
        async with self._lock(vm_id):
            container = await self._container(vm_id)
            if (
                container is not None
                and spec is not None
                and self._shape(container) != spec.shape()
            ):
                # Resources or network changed: a container cannot take them on, make a new one
                # (the workspace is a volume, it stays).
                await self._call(f"replacing {vm_id}", container.remove, force=True)
                if spec.network != "egress":
                    await self._remove_network(vm_id)
                container = None
            running = container is not None and container.status == "running"
            await self._mount_disk(vm_id, spec, running)
            if container is None:
                spec = spec or await self._volume_spec(vm_id)
                if spec is None:
                    raise VMNotFound.of(vm_id)
                container = await self._create_container(vm_id, spec)
            if container.status != "running":
                await self._start(container)
                await self._check_disk(vm_id, container)

    @staticmethod
    def _spec_of(container: Container) -> VMSpec | None:
        try:
            return VMSpec.model_validate_json((container.labels or {})[LABEL_SPEC])
        except (KeyError, ValueError):
            return None

    @classmethod
    def _shape(cls, container: Container) -> dict[str, object] | None:
        spec = cls._spec_of(container)
        return spec.shape() if spec is not None else None

    async def stop_project_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            await self._channels.close(vm_id)
            self._unwatch(vm_id)
            container = await self._container(vm_id)
            if container is None:
                if await self._volume_spec(vm_id) is None:
                    raise VMNotFound.of(vm_id)
                return
            await self._call(
                f"stopping {vm_id}", container.stop, timeout=self.config.stop_timeout_s
            )

    async def _remove(self, vm_id: str) -> None:
        client = await self.client()
        container = await self._container(vm_id)
        if container is not None:
            try:
                await self._call(f"removing {vm_id}", container.remove, force=True)
            except VMNotFound:
                pass
        try:
            volume = await self._call(
                f"finding the workspace of {vm_id}", client.volumes.get, self._volume_name(vm_id)
            )
            await self._call(f"removing the workspace of {vm_id}", volume.remove, force=True)
        except VMNotFound:
            pass
        await self._remove_network(vm_id)
        disk = self._disk(vm_id)
        if disk.exists() or disk.mounted():
            await anyio.to_thread.run_sync(disk.remove)

    async def destroy_project_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            await self._channels.close(vm_id)
            self._unwatch(vm_id)
            await self._remove(vm_id)
        self._lock.forget(vm_id)

    async def get_vm_status(self, vm_id: str) -> VMStatus:
        container = await self._container(vm_id)
        if container is None:
            if await self._volume_spec(vm_id) is None:
                raise VMNotFound.of(vm_id)
            return VMStatus.STOPPED
        return self._status(container.attrs.get("State") or {})

    @staticmethod
    def _status(state: dict[str, Any]) -> VMStatus:
        status = str(state.get("Status", "")).lower()
        if status == "running" and not state.get("Paused"):
            return VMStatus.RUNNING
        if status in ("created", "restarting"):
            return VMStatus.CREATING if status == "restarting" else VMStatus.STOPPED
        if status == "removing":
            return VMStatus.DESTROYING
        if status == "dead" or state.get("OOMKilled"):
            return VMStatus.FAILED
        return VMStatus.STOPPED

    async def get_vm_url(self, vm_id: str) -> str | None:
        if await self._container(vm_id) is None and await self._volume_spec(vm_id) is None:
            raise VMNotFound.of(vm_id)
        return None

    async def open_channel(self, vm_id: str) -> anyio.abc.ByteStream:
        async with self._lock(vm_id):
            # One channel per VM: the last one's agent sees its stdin close and ends, killing
            # the commands it started.
            await self._channels.close(vm_id)
            stream = await self._attach_agent(vm_id)
            await self._watch(vm_id)
            return await self._channels.replace(vm_id, stream)

    async def _attach_agent(self, vm_id: str) -> anyio.abc.ByteStream:
        container = await self._container(vm_id)
        if container is None:
            raise GuestUnreachable(f"the container of VM {vm_id} does not exist; start it first")
        state = self._status(container.attrs.get("State") or {})
        if state != VMStatus.RUNNING:
            raise GuestUnreachable(f"VM {vm_id} is {state}; start it first")
        agent = await self._inject_agent(container)
        client = await self.client()
        api = client.api
        exec_id = await self._call(
            f"starting the guest agent in {vm_id}",
            api.exec_create,
            container.id,
            ["python3", agent, "--root", WORKSPACE, "--run-as", COMMAND_UID_GID],
            user="0",
            stdin=True,
            stdout=True,
            stderr=True,
            tty=False,
            workdir=WORKSPACE,
        )
        raw = await self._call(
            f"attaching to the guest agent in {vm_id}",
            api.exec_start,
            exec_id["Id"],
            socket=True,
        )
        return MultiplexedStream(await self._socket_stream(raw))

    async def _socket_stream(self, raw: Any) -> anyio.abc.SocketStream:
        sock = getattr(raw, "_sock", raw)
        if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
            raise DriverUnavailable(
                "docker",
                "attached channels need a unix or plain TCP engine socket",
                "point DOCKER_HOST at unix:// or tcp:// (TLS and ssh engines are not supported)",
            )
        # Our own descriptor for the connection; docker-py's objects are closed right away.
        owned = sock.dup()
        for handle in (raw, sock):
            try:
                handle.close()
            except OSError:
                pass
        owned.setblocking(False)
        return await anyio.abc.SocketStream.from_socket(owned)

    async def list_vms(self) -> list[VMInfo]:
        client = await self.client()
        containers = await self._call(
            "listing containers", client.containers.list, all=True, filters={"label": LABEL_VM}
        )
        found: dict[str, VMInfo] = {}
        for container in containers:
            labels = container.labels or {}
            created = container.attrs.get("Created")
            found[container.name] = VMInfo(
                vm_id=container.name,
                project_id=labels.get(LABEL_PROJECT),
                status=self._status(container.attrs.get("State") or {}),
                driver=self.name,
                created_at=_parse_time(created),
                labels={k: v for k, v in labels.items() if k != LABEL_SPEC},
                detail=f"container {container.short_id}",
            )
        volumes = await self._call(
            "listing volumes", client.volumes.list, filters={"label": LABEL_VM}
        )
        for volume in volumes:
            labels = volume.attrs.get("Labels") or {}
            vm_id = labels.get(LABEL_VM)
            if vm_id and vm_id not in found:
                found[vm_id] = VMInfo(
                    vm_id=vm_id,
                    project_id=labels.get(LABEL_PROJECT),
                    status=VMStatus.STOPPED,
                    driver=self.name,
                    created_at=_parse_time(volume.attrs.get("CreatedAt")),
                    labels={k: v for k, v in labels.items() if k != LABEL_SPEC},
                    detail=f"volume {volume.name} (no container)",
                )
        networks = await self._call(
            "listing networks", client.networks.list, filters={"label": LABEL_VM}
        )
        for network in networks:
            labels = network.attrs.get("Labels") or {}
            vm_id = labels.get(LABEL_VM)
            if vm_id and vm_id not in found:
                found[vm_id] = VMInfo(
                    vm_id=vm_id,
                    project_id=labels.get(LABEL_PROJECT),
                    status=VMStatus.STOPPED,
                    driver=self.name,
                    labels=labels,
                    detail=f"network {network.name} (no container or volume)",
                )
        disks = self.context.data_dir / "docker" / "disks"
        for image in sorted(disks.glob("*.ext4")) if disks.is_dir() else []:
            vm_id = image.name.removesuffix(".ext4")
            if vm_id not in found and vm_id.startswith(VM_PREFIX):
                project_id = vm_id.removeprefix(VM_PREFIX)
                found[vm_id] = VMInfo(
                    vm_id=vm_id,
                    project_id=project_id,
                    status=VMStatus.STOPPED,
                    driver=self.name,
                    labels=self.context.labels(project_id, vm_id),
                    detail=f"workspace disk {image} (no container or volume)",
                )
        return sorted(found.values(), key=lambda info: info.vm_id)

    async def probe(self) -> Availability:
        try:
            client = await self.client()
            version = await self._call("asking the engine its version", client.version)
        except DriverError as err:
            await self._drop_client()
            return Availability(driver=self.name, usable=False, reason=str(err))
        components = version.get("Components") or [{}]
        product = components[0].get("Name") or version.get("Platform", {}).get("Name") or "engine"
        engine = f"{product} {version.get('Version')}"
        details = {"engine": engine, "api": str(version.get("ApiVersion"))}
        missing = []
        for name in sorted({t.image for t in self.config.templates.values()}):
            try:
                await self._call(f"looking up {name}", client.images.get, name)
                details[f"image {name}"] = "present"
            except (VMNotFound, VMCreationFailed):
                details[f"image {name}"] = "missing"
                missing.append(name)
        if missing:
            return Availability(
                driver=self.name,
                usable=False,
                reason=f"{engine} answers, but image {', '.join(missing)} is missing: run "
                "`projectvm image build`",
                details=details,
            )
        details["storage"] = await self.storage_mode()
        details["network"] = (
            f"egress on the shared network {self.config.egress_network} (egress projects can "
            "reach each other)"
            if self.config.egress_network
            else "egress on a bridge network of the project's own (projects cannot reach each "
            "other)"
        )
        return Availability(
            driver=self.name, usable=True, reason=f"{engine} answers", details=details
        )

    async def storage_mode(self) -> str:
        """How ``max_storage_gb`` is kept here (for ``probe()``, doctor and get_project)."""
        if await self._disks_wanted():
            return (
                "filesystem: each workspace volume binds an ext4 disk image of max_storage_gb; "
                "a write past it fails with 'No space left on device'"
            )
        support = await anyio.to_thread.run_sync(disk_support)
        why = (
            "workspace disks are off in the configuration"
            if self.config.workspace_disks == "off"
            else support.reason
            if not support.usable
            else "the engine does not run on this host's filesystem"
        )
        return (
            f"guard: {why}; /workspace is measured at least every 2 seconds and the container's "
            "writers are killed when it grows past the limit, API writes over it are refused "
            "and no command may grow a file past it; a process can overshoot by what it writes "
            "between two measurements"
        )

    async def _drop_client(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await anyio.to_thread.run_sync(client.close)

    async def aclose(self) -> None:
        await self._channels.close_all()
        for vm_id in list(self._watches):
            self._unwatch(vm_id)
        await self._drop_client()


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    if "." in text:  # engines give nanoseconds; Python takes microseconds
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _network_name(vm_id: str) -> str:
    return f"{vm_id}-net"


def _bind_options(mount_point: os.PathLike[str]) -> dict[str, str]:
    """A local volume that binds the (mounted) disk: the engine mounts it into containers."""
    return {"type": "none", "o": "bind", "device": os.fspath(mount_point)}


def _workspace_device(pid: int) -> str | None:
    """major:minor of what is mounted at /workspace in the mount namespace of ``pid``."""
    if pid <= 0:
        return None
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and fields[4] == WORKSPACE and re.fullmatch(r"\d+:\d+", fields[2]):
            found = fields[2]  # the last mount there is the one on top
    return found


_: type[VMDriver] = DockerDriver
