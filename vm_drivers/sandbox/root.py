"""What a sandbox sees as ``/``.

With the runtime image's Debian tree (``projectvm image build`` keeps it), the sandbox's root is
that tree, read-only, like a VM booted from the image. Without one, it is a minimal read-only
view of the host's system: ``/usr`` (with its ``/bin``, ``/lib``... links) and, from ``/etc``,
only what programs need to run (the loader cache, certificates, time zone, alternatives, name
service switch, a few shell defaults). Never the host's ``/var``, ``/opt``, ``/srv``, ``/mnt``,
``/media``, ``/home``, ``/root``, ``/run``, its users, or ProjectVM's data directory.

Either way ``/etc/passwd``, ``/etc/group``, ``/etc/hosts``, ``/etc/hostname`` and
``/etc/resolv.conf`` are written per sandbox; ``/tmp``, ``/var/tmp`` and ``/run`` are private
and empty; ``/workspace`` is the project's workspace, and the guest agent is read-only at
``/.projectvm/agent.pyz``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from vm_drivers.errors import DriverUnavailable

__all__ = [
    "AGENT_PATH",
    "HOST_ETC",
    "SLIRP_DNS",
    "WORKSPACE",
    "SandboxRoot",
    "etc_files",
]

WORKSPACE = "/workspace"
AGENT_PATH = "/.projectvm/agent.pyz"
# The resolver slirp4netns answers on, inside the sandbox's network namespace.
SLIRP_DNS = "10.0.2.3"
# The host's /etc entries a program may need; nothing that names the host's users or secrets.
HOST_ETC = (
    "alternatives",
    "bash.bashrc",
    "ca-certificates",
    "debian_version",
    "gai.conf",
    "host.conf",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "magic",
    "magic.mime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "profile",
    "protocols",
    "python3",
    "services",
    "shells",
    "ssl/certs",
    "ssl/openssl.cnf",
    "terminfo",
    "timezone",
    "vim",
)
# The image's /etc entries a sandbox never gets from the tree: written per sandbox, or secret.
TREE_ETC_SKIPPED = {
    "group",
    "group-",
    "gshadow",
    "gshadow-",
    "hostname",
    "hosts",
    "passwd",
    "passwd-",
    "resolv.conf",
    "shadow",
    "shadow-",
    "subgid",
    "subuid",
    ".pwd.lock",
}
# Top-level entries of the tree that are per sandbox, not the image's.
TREE_TOP_SKIPPED = {"dev", "etc", "proc", "run", "sys", "tmp", "workspace", ".projectvm"}
# Merged-/usr links (or directories, on older systems) next to /usr on the host.
HOST_USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")

Reach = Callable[[str], str]
"""How bubblewrap reaches a staged item ("workspace", "agent.pyz", "etc", "rootfs")."""


def etc_files(
    *,
    hostname: str,
    egress: bool,
    user: tuple[int, int],
    tree: Path | None,
) -> dict[str, str]:
    """The /etc files written for one sandbox: users, host names and the resolver."""
    uid, gid = user
    passwd = ["root:x:0:0:root:/root:/bin/sh"]
    group = ["root:x:0:"]
    if tree is not None:
        passwd = _lines(tree / "etc" / "passwd") or passwd
        group = _lines(tree / "etc" / "group") or group
    if not any(line.split(":")[2:3] == [str(uid)] for line in passwd):
        passwd.append(f"pvm:x:{uid}:{gid}:ProjectVM:{WORKSPACE}:/bin/sh")
    if not any(line.split(":")[2:3] == [str(gid)] for line in group):
        group.append(f"pvm:x:{gid}:")
    if tree is None:
        passwd.append("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin")
        group.append("nogroup:x:65534:")
    return {
        "passwd": "\n".join(passwd) + "\n",
        "group": "\n".join(group) + "\n",
        "hostname": f"{hostname}\n",
        "hosts": f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n::1 localhost ip6-localhost\n",
        "resolv.conf": f"nameserver {SLIRP_DNS}\n" if egress else "",
    }


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


class SandboxRoot:
    """The sandbox's ``/``: ``tree`` (the image's Debian tree) or, if None, the host view."""

    def __init__(self, tree: Path | None, hidden_paths: list[str] | None = None) -> None:
        self.tree = tree
        self.hidden_paths = [p.rstrip("/") or "/" for p in hidden_paths or []]

    @property
    def kind(self) -> str:
        return "image" if self.tree is not None else "host"

    def describe(self) -> str:
        if self.tree is not None:
            return f"the runtime image's tree {self.tree}, read-only"
        return "a read-only view of the host's /usr and a few /etc files (no image tree built)"

    def python(self, configured: str | None) -> str:
        """The python3 inside the sandbox that runs the agent."""
        candidates = [configured] if configured else list(PYTHONS)
        for candidate in candidates:
            if self._visible(candidate):
                return candidate
        where = f"in the image tree {self.tree}" if self.tree else "under the host's /usr"
        raise DriverUnavailable(
            "local",
            f"no python3 is visible inside the sandbox ({', '.join(candidates)} {where})",
            "install python3 (apt-get install python3), rebuild the image, or set the local "
            "driver's python option",
        )

    def _visible(self, path: str) -> bool:
        if not path.startswith("/"):
            return False
        if self.tree is not None:
            return os.access(self.tree / path.lstrip("/"), os.X_OK)
        real = os.path.realpath(path)
        return (
            real.startswith("/usr/")
            and os.access(real, os.X_OK)
            and not any(real == h or real.startswith(h + "/") for h in self.hidden_paths)
        )

    # -- bubblewrap ---------------------------------------------------------------------------

    def bwrap_args(self, reach: Reach, etc_names: list[str]) -> list[str]:
        """The filesystem half of the bubblewrap command line. ``etc_names`` are the files of
        ``etc_files``, staged as the directory ``reach("etc")``."""
        args = self._system(reach)
        for name in etc_names:
            args += ["--ro-bind", f"{reach('etc')}/{name}", f"/etc/{name}"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--perms", "1777", "--tmpfs", "/tmp"]
        if self.tree is None:
            args += ["--dir", "/var"]
        args += ["--perms", "1777", "--tmpfs", "/var/tmp", "--tmpfs", "/run"]
        args += ["--bind", reach("workspace"), WORKSPACE]
        # The agent's code: readable by everyone (it is no secret), writable by no one.
        args += ["--perms", "0755", "--dir", os.path.dirname(AGENT_PATH)]
        args += ["--ro-bind", reach("agent.pyz"), AGENT_PATH]
        return args

    def _system(self, reach: Reach) -> list[str]:
        if self.tree is not None:
            return self._tree_system(reach)
        args = ["--ro-bind", "/usr", "/usr"]
        for name in HOST_USR_LINKS:
            args += _entry(Path("/") / name, f"/{name}")
        args += ["--dir", "/etc"]
        versioned = sorted(n for n in os.listdir("/etc") if n.startswith("python3."))
        for name in [*HOST_ETC, *versioned]:
            args += _entry(Path("/etc") / name, f"/etc/{name}")
        for hidden in self.hidden_paths:
            # A hidden place under what is shown (/usr/local/secrets, say) is covered over.
            if hidden.startswith("/usr/") and os.path.isdir(hidden):
                args += ["--tmpfs", hidden]
        return args

    def _tree_system(self, reach: Reach) -> list[str]:
        assert self.tree is not None
        rootfs = reach("rootfs")
        args: list[str] = []
        for entry in sorted(os.listdir(self.tree)):
            if entry in TREE_TOP_SKIPPED:
                continue
            args += _entry(self.tree / entry, f"/{entry}", source=f"{rootfs}/{entry}")
        args += ["--dir", "/etc"]
        for entry in sorted(os.listdir(self.tree / "etc")):
            if entry in TREE_ETC_SKIPPED:
                continue
            args += _entry(
                self.tree / "etc" / entry, f"/etc/{entry}", source=f"{rootfs}/etc/{entry}"
            )
        return args


def _entry(path: Path, dest: str, source: str | None = None) -> list[str]:
    """Show ``path`` at ``dest``: a link as the same link, anything else read-only (from
    ``source``, how bubblewrap reaches it, if not ``path`` itself); nothing if it is missing."""
    if path.is_symlink():
        return ["--symlink", os.readlink(path), dest]
    if path.exists():
        return ["--ro-bind", source or str(path), dest]
    return []
