"""Debian packages fetched with the host's apt and unpacked without installing them.

The VM image takes its kernel and busybox from Debian's archive through ``apt-get download``
(the ordinary client, so whatever mirror or proxy the host uses applies) and ``dpkg-deb -x``:
no root needed for either, nothing installed on the host.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import anyio

__all__ = ["DebFetchError", "FetchedDeb", "fetch_deb", "resolve_dependency"]


class DebFetchError(RuntimeError):
    """apt could not name, download or unpack a package."""


class FetchedDeb:
    """A downloaded package: its exact name and version, the .deb and where it is unpacked."""

    def __init__(self, package: str, version: str, deb: Path, root: Path) -> None:
        self.package = package
        self.version = version
        self.deb = deb
        self.root = root

    def sha256(self) -> str:
        return hashlib.sha256(self.deb.read_bytes()).hexdigest()


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise DebFetchError(
            f"{name} is not installed; install {package} (apt-get install {package})"
        )
    return found


async def _run(argv: list[str], cwd: Path | None = None) -> str:
    result = await anyio.run_process(argv, cwd=cwd, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).decode(errors="replace").strip()
        raise DebFetchError(
            f"`{' '.join(argv)}` failed with status {result.returncode}: {detail[-2000:]}; "
            "check that apt can reach the Debian archive (`apt-get update`)"
        )
    return result.stdout.decode(errors="replace")


async def resolve_dependency(metapackage: str, prefix: str) -> str:
    """The concrete package a metapackage depends on, e.g. ``linux-image-cloud-amd64`` →
    ``linux-image-6.1.0-57-cloud-amd64`` (the first dependency starting with ``prefix``)."""
    output = await _run([_tool("apt-cache", "apt"), "depends", metapackage])
    for line in output.splitlines():
        match = re.match(r"\s*Depends:\s*(\S+)", line)
        if match and match.group(1).startswith(prefix):
            return match.group(1)
    raise DebFetchError(
        f"apt knows no {prefix}* dependency of {metapackage}; run `apt-get update` and check "
        "that the host's apt sources include Debian's main archive"
    )


async def fetch_deb(package: str, directory: Path) -> FetchedDeb:
    """Download ``package`` into ``directory`` and unpack it under ``directory/root``.

    Reuses a previous download of the same version found there.
    """
    apt_get = _tool("apt-get", "apt")
    dpkg_deb = _tool("dpkg-deb", "dpkg")
    await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
    version = (
        (await _run([_tool("apt-cache", "apt"), "policy", package]))
        .split("Candidate:", 1)[-1]
        .split()[0]
    )
    if not version or version == "(none)":
        raise DebFetchError(
            f"apt has no candidate version of {package}; run `apt-get update` and retry"
        )
    deb = _deb_path(directory, package, version)
    if deb is None:
        await _run([apt_get, "download", "-q", f"{package}={version}"], cwd=directory)
        deb = _deb_path(directory, package, version)
        if deb is None:
            raise DebFetchError(f"apt-get download {package} left no .deb in {directory}")
    root = directory / f"{package}_{_safe(version)}"
    if not (root / ".unpacked").exists():
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(root, ignore_errors=True))
        await _run([dpkg_deb, "-x", str(deb), str(root)])
        (root / ".unpacked").write_text(version + "\n")
    return FetchedDeb(package, version, deb, root)


def _safe(version: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+~-]", "_", version)


def _deb_path(directory: Path, package: str, version: str) -> Path | None:
    # apt names the file <package>_<version without epoch, ':' escaped>_<arch>.deb
    plain = version.split(":", 1)[-1]
    for candidate in sorted(directory.glob(f"{package}_*.deb")):
        name = candidate.name.replace("%3a", ":")
        if name.startswith((f"{package}_{plain}_", f"{package}_{version}_")):
            return candidate
    return None
