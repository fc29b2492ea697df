"""Push the project runtime image, with the guest agent baked in, to an OCI registry.

For drivers whose VMs pull their image from a registry (fly: ``registry.fly.io/<app>``). The
image is made from the same registry-free root filesystem archive ``projectvm image build``
produces (``guest_runtime.image.rootfs.tar_rootfs``), plus one layer holding the agent at
``/.projectvm/agent.pyz``, and pushed with the OCI distribution API over httpx: no Docker
engine needed on the server. Blobs the registry already has are not sent again. Registry auth
is Basic, or Docker's Bearer-token challenge (``WWW-Authenticate: Bearer realm=...``) with the
Basic credentials; for Fly's registry the user is ``x`` and the password an API token.

The result is the image pinned by digest (``host/repo@sha256:...``): configure that, never a
moving tag, as the fly driver's ``image``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import re
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from pydantic import SecretStr

from guest_runtime.bundle import agent_zipapp, agent_zipapp_digest
from vm_drivers.errors import DriverConfigError, DriverUnavailable, VMOperationFailed

__all__ = [
    "AGENT_IMAGE_PATH",
    "ImageReference",
    "Layer",
    "RegistryAuth",
    "agent_layer",
    "layer_from_tar",
    "push_runtime_image",
]

AGENT_IMAGE_PATH = ".projectvm/agent.pyz"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CHUNK = 1024 * 1024
_FIXED_TIME = "2020-01-01T00:00:00Z"
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "amd64": "amd64"}
Progress = Callable[[str], None]


@dataclass(frozen=True)
class RegistryAuth:
    username: str
    password: SecretStr


@dataclass(frozen=True)
class ImageReference:
    """``host[:port]/repository[:tag]``; the host must be given (no default registry)."""

    host: str
    repository: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        host, slash, rest = text.partition("/")
        if not slash or not ("." in host or ":" in host or host == "localhost"):
            raise DriverConfigError(
                f"image reference {text!r} has no registry host; write it as "
                "registry.fly.io/<app>:<tag>"
            )
        repository, _, tag = rest.rpartition(":") if ":" in rest else (rest, "", "latest")
        if not re.fullmatch(r"[a-z0-9]+([._/-][a-z0-9]+)*", repository):
            raise DriverConfigError(f"invalid repository {repository!r} in {text!r}")
        return cls(host, repository, tag or "latest")

    @property
    def base_url(self) -> str:
        """https, except for a registry on this machine (as Docker allows)."""
        name = self.host.rsplit(":", 1)[0] if not self.host.startswith("[") else self.host
        local = name in ("localhost", "[::1]") or name.startswith("127.")
        return f"{'http' if local else 'https'}://{self.host}"

    def pinned(self, digest: str) -> str:
        return f"{self.host}/{self.repository}@{digest}"


@dataclass(frozen=True)
class Layer:
    """A gzipped tar layer: where its bytes are, their digest, and the uncompressed digest."""

    path: Path
    digest: str
    diff_id: str
    size: int


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _gzip_layer(source: Path, target: Path) -> Layer:
    diff = hashlib.sha256()
    # mtime 0 and no file name: the same tar always gives the same layer digest.
    with (
        source.open("rb") as raw,
        target.open("wb") as out,
        gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as packed,
    ):
        while chunk := raw.read(CHUNK):
            diff.update(chunk)
            packed.write(chunk)
    return Layer(target, _sha256_file(target), f"sha256:{diff.hexdigest()}", target.stat().st_size)


async def layer_from_tar(archive: Path, work_dir: Path) -> Layer:
    """Gzip a tar (a root filesystem, say) into a layer in ``work_dir`` (in a worker thread)."""
    target = work_dir / f"{archive.name}.layer.gz"
    return await anyio.to_thread.run_sync(_gzip_layer, archive, target)


async def agent_layer(work_dir: Path) -> Layer:
    """A layer holding the current guest agent at ``/.projectvm/agent.pyz``."""
    data = agent_zipapp()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        directory = tarfile.TarInfo(".projectvm")
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        archive.addfile(directory)
        info = tarfile.TarInfo(AGENT_IMAGE_PATH)
        info.size = len(data)
        info.mode = 0o755
        archive.addfile(info, io.BytesIO(data))
    raw = work_dir / f"agent-{agent_zipapp_digest()}.tar"
    raw.write_bytes(buffer.getvalue())
    return await layer_from_tar(raw, work_dir)


def image_config(layers: list[Layer], architecture: str | None = None) -> dict[str, Any]:
    machine = architecture or platform.machine()
    return {
        "created": _FIXED_TIME,
        "architecture": _ARCHITECTURES.get(machine, machine),
        "os": "linux",
        "config": {
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
            ],
            "WorkingDir": "/workspace",
            "Cmd": ["/bin/bash"],
            "Labels": {"projectvm.agent": agent_zipapp_digest()},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": _FIXED_TIME, "created_by": "projectvm"} for _ in layers],
    }


class _Registry:
    """Just enough of the OCI distribution API to push, with Basic or Bearer auth."""

    def __init__(
        self,
        reference: ImageReference,
        auth: RegistryAuth | None,
        transport: httpx.AsyncBaseTransport | None,
        timeout_s: float,
    ) -> None:
        self.reference = reference
        self._auth = auth
        self._token: str | None = None
        self._client = httpx.AsyncClient(
            base_url=reference.base_url, transport=transport, timeout=timeout_s
        )
        self.uploaded: list[str] = []

    async def aclose(self) -> None:
        await self._client.aclose()

    def _headers(self) -> dict[str, str]:
        if self._token:
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    async def _basic(self) -> httpx.BasicAuth:
        if self._auth is None:
            raise DriverConfigError(
                f"the registry {self.reference.host} wants credentials; give a user and a "
                "password (for Fly: user x, password FLY_API_TOKEN)"
            )
        return httpx.BasicAuth(self._auth.username, self._auth.password.get_secret_value())

    async def _authenticate(self, challenge: str) -> None:
        scheme, _, parameters = challenge.partition(" ")
        if scheme.lower() == "basic":
            basic = await self._basic()
            self._client.auth = basic
            return
        if scheme.lower() != "bearer":
            raise VMOperationFailed(f"the registry asks for unknown auth {challenge!r}")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', parameters))
        realm = fields.pop("realm", "")
        if not realm:
            raise VMOperationFailed(f"the registry's auth challenge has no realm: {challenge!r}")
        fields.setdefault("scope", f"repository:{self.reference.repository}:pull,push")
        answer = await self._client.get(
            realm,
            params=fields,
            auth=await self._basic() if self._auth else httpx.USE_CLIENT_DEFAULT,
        )
        if answer.status_code in (401, 403) and self._auth is None:
            await self._basic()  # raises: say that credentials are needed
        if answer.status_code in (401, 403):
            raise DriverConfigError(
                f"the registry {self.reference.host} refused the credentials (HTTP "
                f"{answer.status_code}); check the user and password (for Fly: user x, "
                "password FLY_API_TOKEN)"
            )
        answer.raise_for_status()
        data = answer.json()
        self._token = str(data.get("token") or data.get("access_token") or "")
        if not self._token:
            raise VMOperationFailed(f"the registry's token service gave no token: {data}")

    async def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        """One request, authenticating once when challenged; errors become driver errors."""
        for attempt in range(2):
            try:
                response = await self._client.request(
                    method,
                    url,
                    headers={**options.pop("headers", {}), **self._headers()},
                    **options,
                )
            except httpx.TransportError as err:
                raise DriverUnavailable(
                    "registry",
                    f"{self.reference.base_url} did not answer ({err or type(err).__name__})",
                    "check the registry address and the network",
                ) from err
            if response.status_code == 401 and attempt == 0:
                await self._authenticate(response.headers.get("www-authenticate", "Basic"))
                continue
            if response.status_code in (401, 403):
                raise DriverConfigError(
                    f"the registry {self.reference.host} refused access to "
                    f"{self.reference.repository} (HTTP {response.status_code}); check the "
                    "credentials and that the repository (the Fly app) exists"
                )
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def blob_exists(self, digest: str) -> bool:
        path = f"/v2/{self.reference.repository}/blobs/{digest}"
        return (await self.request("HEAD", path)).status_code == 200

    async def upload(self, digest: str, content: bytes | Path) -> None:
        if await self.blob_exists(digest):
            return
        start = await self.request("POST", f"/v2/{self.reference.repository}/blobs/uploads/")
        if start.status_code != 202 or "location" not in start.headers:
            raise VMOperationFailed(
                f"the registry refused to start an upload ({start.status_code}: {start.text[:200]})"
            )
        location = start.headers["location"]
        separator = "&" if "?" in location else "?"
        body: bytes | AsyncIterator[bytes] = (
            content if isinstance(content, bytes) else _read_chunks(content)
        )
        if isinstance(content, bytes):
            size = len(content)
        else:
            size = (await anyio.Path(content).stat()).st_size
        done = await self.request(
            "PUT",
            f"{location}{separator}digest={digest}",
            content=body,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        if done.status_code != 201:
            raise VMOperationFailed(
                f"the registry refused blob {digest[:19]} ({done.status_code}: {done.text[:200]})"
            )
        self.uploaded.append(digest)

    async def put_manifest(self, manifest: bytes) -> str:
        path = f"/v2/{self.reference.repository}/manifests/{self.reference.tag}"
        answer = await self.request(
            "PUT", path, content=manifest, headers={"Content-Type": MANIFEST_TYPE}
        )
        if answer.status_code != 201:
            raise VMOperationFailed(
                f"the registry refused the manifest ({answer.status_code}: {answer.text[:300]})"
            )
        digest = f"sha256:{hashlib.sha256(manifest).hexdigest()}"
        given = answer.headers.get("docker-content-digest")
        if given and given != digest:
            raise VMOperationFailed(f"the registry stored the manifest as {given}, not {digest}")
        return digest


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as handle:
        while chunk := await handle.read(CHUNK):
            yield chunk


async def push_runtime_image(
    rootfs_archive: Path,
    target: str,
    *,
    auth: RegistryAuth | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = 300,
    progress: Progress = lambda _: None,
) -> str:
    """Push ``rootfs_archive`` (a root filesystem tar) plus the agent as ``target``; return the
    image pinned by digest (``host/repository@sha256:...``)."""
    reference = ImageReference.parse(target)
    registry = _Registry(reference, auth, transport, timeout_s)
    work_dir = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp))
    try:
        progress(f"packing {rootfs_archive.name} as a layer")
        layers = [await layer_from_tar(rootfs_archive, work_dir), await agent_layer(work_dir)]
        config = json.dumps(image_config(layers), sort_keys=True, separators=(",", ":")).encode()
        config_digest = f"sha256:{hashlib.sha256(config).hexdigest()}"
        for layer in layers:
            progress(f"pushing layer {layer.digest[:19]} ({layer.size / 1e6:.1f} MB)")
            await registry.upload(layer.digest, layer.path)
        await registry.upload(config_digest, config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
                "layers": [
                    {"mediaType": LAYER_TYPE, "digest": layer.digest, "size": layer.size}
                    for layer in layers
                ],
            },
            separators=(",", ":"),
        ).encode()
        digest = await registry.put_manifest(manifest)
        progress(f"pushed {target} as {digest}")
        return reference.pinned(digest)
    finally:
        await registry.aclose()
        await anyio.to_thread.run_sync(shutil.rmtree, work_dir, True)
