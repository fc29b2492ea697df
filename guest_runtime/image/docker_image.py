"""A rootfs tree as a Docker Engine image: packed as a tar and imported, no registry needed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import docker
import docker.errors
import requests.exceptions

from guest_runtime.image.rootfs import Progress, RootfsBuildError, tar_rootfs

__all__ = ["DockerImage"]

T = TypeVar("T")

WORKSPACE = "/workspace"


class DockerImage:
    """Import into the engine behind ``client`` as ``tag`` (``repo:version``)."""

    def __init__(self, client: docker.DockerClient, tag: str) -> None:
        self._client = client
        self.tag = tag
        self.description = f"engine image {tag}"

    async def _call(self, action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
        except (docker.errors.DockerException, requests.exceptions.RequestException) as err:
            raise RootfsBuildError(f"{action} failed: {err}") from err

    async def write(self, tree: Path, work_dir: Path, progress: Progress) -> str:
        archive = work_dir / "rootfs.tar"
        await tar_rootfs(tree, archive, progress=progress)
        try:
            return await self.import_archive(archive, progress)
        finally:
            await anyio.Path(archive).unlink(missing_ok=True)

    async def import_archive(self, archive: Path, progress: Progress) -> str:
        """Import a root filesystem tar as ``tag``; returns the image id."""
        repository, _, tag = self.tag.rpartition(":")
        size_mb = (await anyio.Path(archive).stat()).st_size / 1e6
        progress(f"importing {archive.name} ({size_mb:.0f} MB) as {self.tag}")
        changes = [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            f"WORKDIR {WORKSPACE}",
            'CMD ["/bin/bash"]',
        ]
        output = await self._call(
            f"importing {self.tag}",
            self._client.api.import_image_from_file,
            str(archive),
            repository=repository,
            tag=tag,
            changes=changes,
        )
        image_id = None
        for line in str(output).splitlines():
            try:
                status = json.loads(line)
            except ValueError:
                continue
            if not isinstance(status, dict):
                continue
            if status.get("errorDetail") or status.get("error"):
                detail = status.get("errorDetail") or status.get("error")
                raise RootfsBuildError(f"importing {self.tag} failed: {detail}")
            image_id = status.get("id") or image_id
            if str(status.get("status", "")).startswith("sha256:"):
                image_id = status["status"]
        if image_id is None:
            raise RootfsBuildError(f"importing {self.tag}: the engine reported no image id")
        # Some engines (Podman's compatible service) ignore the tag of an import: tag it here.
        found = await self._call(f"looking up {image_id}", self._client.images.get, image_id)
        await self._call(f"tagging {self.tag}", found.tag, repository, tag)
        if tag != "latest":
            await self._drop_stray_latest(repository, str(found.id))
        progress(f"imported {self.tag} ({found.short_id})")
        return f"{self.description} ({found.short_id})"

    async def _drop_stray_latest(self, repository: str, image_id: str) -> None:
        """Remove ``repository:latest`` if the import just put it on ``image_id`` unasked."""
        try:
            latest = await self._call("inspecting", self._client.images.get, f"{repository}:latest")
        except RootfsBuildError:
            return
        if latest.id == image_id:
            await self._call(
                "untagging", self._client.images.remove, f"{repository}:latest", noprune=True
            )
