"""How a Firecracker process is started: directly, or under Firecracker's jailer.

Directly, the VMM runs as the server's user with its sockets in a short runtime directory, and
every path handed to the API is a host path. Under the jailer (root only), the jailer builds a
chroot at ``<chroot_base_dir>/<exec name>/<id>/root``, drops to the configured uid/gid and execs
Firecracker inside it (same pid: no ``--daemonize``, no ``--new-pid-ns``); every file the API
names must then be inside the chroot, owned by that uid: :meth:`Launch.stage` hard-links (or
copies) it in and returns the path as Firecracker sees it.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vm_drivers.config import FirecrackerJailerConfig
from vm_drivers.errors import DriverConfigError, DriverUnavailable
from vm_drivers.firecracker.process import RuntimePaths

__all__ = ["Launch", "find_binary", "plan_launch"]

JAILER_HINT = (
    "the jailer ships in the same release tarball as firecracker "
    "(release-*/jailer-v*-x86_64); or remove the jailer option to run Firecracker directly"
)


@dataclass(frozen=True)
class Launch:
    """The command line of one VMM and where its files live."""

    argv: list[str]
    paths: RuntimePaths
    jailer: FirecrackerJailerConfig | None = None
    # The directory to remove after the VMM exits (the jail's ``<base>/<exec>/<id>``).
    cleanup: Path | None = None

    @property
    def jailed(self) -> bool:
        return self.jailer is not None

    def stage(self, source: Path, name: str, *, writable: bool = False) -> str:
        """``source`` as Firecracker must name it; inside the jail, a hard link to it.

        A read-only file may be copied when it lives on another filesystem and keeps its owner
        (it must be readable by the jailed user); a writable one (the data disk) must be linked
        and is given to the jailed user.
        """
        if self.jailer is None:
            return str(source)
        source = source.resolve()  # link the file, not a symlink that is dangling in the jail
        target = self.paths.root / name
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
        except OSError as err:
            if err.errno != errno.EXDEV or writable:
                raise DriverConfigError(
                    f"cannot link {source} into the jail {self.paths.root}: {err}; put the "
                    "jailer's chroot_base_dir on the same filesystem as the data directory"
                ) from err
            shutil.copyfile(source, target)
        if writable:
            os.chown(target, self.jailer.uid, self.jailer.gid)
        return self.paths.api_view(target)

    def make_owned_file(self, path: Path) -> None:
        """An empty file the VMM writes (its log), owned by the jailed user if jailed."""
        path.write_bytes(b"")
        if self.jailer is not None:
            os.chown(path, self.jailer.uid, self.jailer.gid)

    def remove(self) -> None:
        """Remove the runtime directory (the whole jail when jailed)."""
        shutil.rmtree(self.cleanup or self.paths.root, ignore_errors=True)


def find_binary(name: str) -> str | None:
    """``name`` (on PATH, or a path) as an absolute path to an executable, if there is one."""
    found = shutil.which(name)
    return os.path.abspath(found) if found is not None else None


def plan_launch(
    binary: str,
    vmm_id: str,
    runtime_base: Path,
    jailer: FirecrackerJailerConfig | None,
    *,
    check: bool = True,
) -> Launch:
    """How to start the VMM named ``vmm_id`` (``[A-Za-z0-9-]``, at most 64 characters).

    With ``check`` false only the paths matter (to find or clean up an earlier VMM), so a
    missing jailer is not an error.
    """
    if jailer is None:
        paths = RuntimePaths(runtime_base / vmm_id)
        argv = [binary, "--api-sock", str(paths.api_socket), "--id", vmm_id]
        return Launch(argv, paths)
    jailer_binary = shutil.which(jailer.binary)
    if check:
        if os.geteuid() != 0:
            raise DriverUnavailable(
                "firecracker",
                "the jailer needs root, and the server does not run as root",
                "run the server as root, or remove the jailer option",
            )
        if jailer_binary is None:
            raise DriverUnavailable(
                "firecracker", f"the jailer {jailer.binary!r} was not found", JAILER_HINT
            )
    jail = jailer.chroot_base_dir / Path(binary).name / vmm_id
    paths = RuntimePaths(jail / "root", chroot=True)
    argv = [
        jailer_binary or jailer.binary,
        "--id",
        vmm_id,
        "--exec-file",
        binary,
        "--uid",
        str(jailer.uid),
        "--gid",
        str(jailer.gid),
        "--chroot-base-dir",
        str(jailer.chroot_base_dir),
        "--cgroup-version",
        str(jailer.cgroup_version),
    ]
    if jailer.parent_cgroup:
        argv += ["--parent-cgroup", jailer.parent_cgroup]
    argv += ["--", "--api-sock", "/" + str(paths.api_socket.relative_to(paths.root))]
    return Launch(argv, paths, jailer, cleanup=jail)
