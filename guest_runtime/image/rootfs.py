"""A Debian root filesystem for project VMs, built with debootstrap: no image registry needed.

The same tree becomes a container image (imported through the Docker Engine API by the docker
driver) or a VM disk. Packages come from the Debian archive the host's apt already uses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import anyio

__all__ = [
    "IMAGE_VERSION",
    "TEMPLATE_PACKAGES",
    "RootfsBuildError",
    "apt_mirror",
    "build_rootfs",
    "tar_rootfs",
]

# Bump when the package list or layout changes: images are tagged with it.
IMAGE_VERSION = "1"
# Commands run as this user (uid/gid 1000); the guest agent stays root.
COMMAND_USER = "pvm"
DEFAULT_SUITE = "bookworm"

# What each template's image holds (beyond debootstrap's minimal base).
TEMPLATE_PACKAGES: dict[str, list[str]] = {
    "runtime": [
        "python3",
        "python3-venv",
        "python3-pip",
        "git",
        "curl",
        "wget",
        "vim",
        "nano",
        "htop",
        "procps",
        "less",
        "ca-certificates",
        "nodejs",
        "npm",
        "xz-utils",
        "unzip",
    ],
    "minimal": ["python3", "procps", "ca-certificates"],
}

Progress = Callable[[str], None]


class RootfsBuildError(RuntimeError):
    pass


def apt_mirror(suite: str = DEFAULT_SUITE) -> str | None:
    """The Debian archive URI this host's apt uses for ``suite`` (None: debootstrap's default)."""
    sources = Path("/etc/apt/sources.list.d")
    candidates: list[tuple[str, str]] = []
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields = {
                key.strip().lower(): value.strip()
                for key, _, value in (line.partition(":") for line in stanza.splitlines())
                if value and not key.startswith("#")
            }
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                for uri in fields.get("uris", "").split():
                    for found_suite in fields.get("suites", "").split():
                        candidates.append((uri, found_suite))
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text(errors="replace").splitlines():
            match = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if match:
                candidates.append((match.group(1), match.group(2)))
    for uri, found_suite in candidates:
        if found_suite == suite and "security" not in uri:
            return uri
    return None


def _check_tools() -> str:
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise RootfsBuildError(
            "debootstrap is not installed; install it (apt-get install debootstrap) and retry"
        )
    if os.geteuid() != 0:
        raise RootfsBuildError("building a root filesystem needs root (debootstrap chroots)")
    return debootstrap


async def _stream(argv: list[str], progress: Progress) -> None:
    process = await anyio.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail: list[str] = []
    async with process:
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    progress(line)
                    tail = [*tail[-20:], line]
        await process.wait()
    if process.returncode != 0:
        raise RootfsBuildError(
            f"{Path(argv[0]).name} failed with status {process.returncode}:\n" + "\n".join(tail)
        )


async def build_rootfs(
    target: Path,
    template: str = "runtime",
    *,
    suite: str = DEFAULT_SUITE,
    mirror: str | None = None,
    progress: Progress = lambda _: None,
) -> None:
    """A Debian ``suite`` tree with the template's packages in ``target`` (replaced if present).

    debootstrap lays down the minimal base; apt inside the tree then installs the packages,
    since only apt resolves large dependency sets (npm's, say) reliably.
    """
    debootstrap = _check_tools()
    if template not in TEMPLATE_PACKAGES:
        raise RootfsBuildError(
            f"unknown template {template!r}; choose one of {', '.join(TEMPLATE_PACKAGES)}"
        )
    await anyio.to_thread.run_sync(_fresh_directory, target)
    mirror = mirror or apt_mirror(suite)
    argv = [debootstrap, "--variant=minbase", suite, str(target)]
    if mirror:
        argv.append(mirror)
    progress(f"debootstrap {suite} into {target}" + (f" from {mirror}" if mirror else ""))
    await _stream(argv, progress)
    await anyio.to_thread.run_sync(_block_service_starts, target)
    chroot = ["chroot", str(target), "/usr/bin/env", "DEBIAN_FRONTEND=noninteractive"]
    progress(f"installing {template} packages: {' '.join(TEMPLATE_PACKAGES[template])}")
    await _stream([*chroot, "apt-get", "update", "-q"], progress)
    await _stream(
        [
            *chroot,
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            *TEMPLATE_PACKAGES[template],
        ],
        progress,
    )
    await _stream([*chroot, "apt-get", "clean"], progress)
    await anyio.to_thread.run_sync(_finish, target, template, suite)
    progress("root filesystem ready")


def _fresh_directory(target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)


def _block_service_starts(target: Path) -> None:
    policy = target / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)


def _finish(target: Path, template: str, suite: str) -> None:
    (target / "usr" / "sbin" / "policy-rc.d").unlink(missing_ok=True)
    lists = target / "var" / "lib" / "apt" / "lists"
    for entry in lists.glob("*") if lists.is_dir() else []:
        if entry.is_file() and entry.name != "lock":
            entry.unlink()
    (target / "workspace").mkdir(exist_ok=True)
    _add_command_user(target)
    (target / "etc" / "projectvm-image").write_text(
        f"template={template}\nversion={IMAGE_VERSION}\nsuite={suite}\n"
    )


def _add_command_user(target: Path) -> None:
    """The ``pvm`` user (uid and gid 1000, home /workspace) that every command runs as."""
    for name, line in (
        ("passwd", f"{COMMAND_USER}:x:1000:1000:ProjectVM commands:/workspace:/bin/bash\n"),
        ("group", f"{COMMAND_USER}:x:1000:\n"),
        ("shadow", f"{COMMAND_USER}:!:19000::::::\n"),
    ):
        path = target / "etc" / name
        existing = path.read_text() if path.exists() else ""
        if not any(entry.split(":")[0] == COMMAND_USER for entry in existing.splitlines()):
            path.write_text(existing + line)


async def tar_rootfs(source: Path, archive: Path, progress: Progress = lambda _: None) -> None:
    """Pack a root filesystem into an uncompressed tar, numeric owners kept."""
    progress(f"packing {source} into {archive}")
    await _stream(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(source), "-cf", str(archive), "."],
        progress,
    )
