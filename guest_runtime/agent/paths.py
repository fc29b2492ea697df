"""Confinement of every path to the workspace root.

A path is first normalised lexically (``..`` may not climb above the root, absolute paths must lie
under it, NUL bytes are refused). It is then walked one component at a time with directory file
descriptors and ``O_NOFOLLOW``, expanding symlinks ourselves: a link whose target leaves the
workspace is refused, and a component swapped for a symlink mid-walk fails instead of being
followed. Callers get the open parent directory and the final name, so the operation itself
(``openat``, ``renameat``, ...) cannot be redirected either.
"""

from __future__ import annotations

import os
import posixpath
import stat
from typing import TYPE_CHECKING, List, Optional

from .errors import GuestError

if TYPE_CHECKING:
    from .identity import Identity

MAX_SYMLINK_HOPS = 40
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW


def outside(path: str, detail: str = "") -> GuestError:
    suffix = " (%s)" % detail if detail else ""
    return GuestError(
        "path_outside_workspace",
        "path %r is outside the workspace%s; use a path relative to the workspace root"
        % (path, suffix),
        path=path,
    )


def not_found(path: str) -> GuestError:
    return GuestError(
        "not_found", "%r does not exist; list_files shows what is there" % path, path=path
    )


class Resolved:
    """An open parent directory plus the final component (``None`` for the root itself)."""

    def __init__(self, dir_fd: int, name: Optional[str], parts: List[str]) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.parts = parts

    @property
    def path(self) -> str:
        return "/".join(self.parts) or "."

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self) -> "Resolved":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lstat(self) -> Optional[os.stat_result]:
        try:
            if self.name is None:
                return os.stat(self.dir_fd)
            return os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None


class Workspace:
    """The workspace root inside the VM; every file operation resolves its paths here.

    ``owner``, when commands run under an identity of their own, owns what is created here.
    """

    def __init__(self, root: str, owner: "Optional[Identity]" = None) -> None:
        self.root = os.path.realpath(root)
        self.owner = owner

    def parts(self, path: str) -> List[str]:
        """Split ``path`` into normalised components relative to the root, or refuse it."""
        if not isinstance(path, str):
            raise GuestError("invalid_path", "path must be a string")
        if "\x00" in path:
            raise GuestError(
                "invalid_path", "path contains a NUL byte; remove it and try again", path=path
            )
        if path.startswith("/"):
            normal = posixpath.normpath(path)
            if normal == self.root:
                return []
            if not normal.startswith(self.root + "/"):
                raise outside(path)
            path = normal[len(self.root) + 1 :]
        return self._normalise(path.split("/"), path)

    def _normalise(self, pieces: List[str], original: str) -> List[str]:
        parts: List[str] = []
        for piece in pieces:
            if piece in ("", "."):
                continue
            if piece == "..":
                if not parts:
                    raise outside(original, "'..' climbs above the workspace root")
                parts.pop()
                continue
            parts.append(piece)
        return parts

    def _expand_link(self, parent: List[str], target: str, rest: List[str], path: str) -> List[str]:
        if target.startswith("/"):
            normal = posixpath.normpath(target)
            if normal == self.root:
                base: List[str] = []
            elif normal.startswith(self.root + "/"):
                base = normal[len(self.root) + 1 :].split("/")
            else:
                raise outside(path, "a symlink in it points to %s" % target)
        else:
            base = parent + target.split("/")
        try:
            return self._normalise(base + rest, path)
        except GuestError:
            raise outside(path, "a symlink in it points to %s" % target) from None

    def resolve(self, path: str, follow_final: bool = True, create_dirs: bool = False) -> Resolved:
        """Open the directory that holds ``path``'s final component, confined to the root.

        ``follow_final`` expands a symlink in the last component too (reads and writes go to
        the target); ``create_dirs`` makes missing intermediate directories.
        """
        parts = self.parts(path)
        hops = 0
        while True:
            expanded = self._walk(parts, path, follow_final, create_dirs)
            if isinstance(expanded, Resolved):
                return expanded
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise GuestError("invalid_path", "too many symlinks in %r" % path, path=path)
            parts = expanded

    def _walk(
        self, parts: List[str], path: str, follow_final: bool, create_dirs: bool
    ) -> "Resolved | List[str]":
        """Walk ``parts``; return the resolution, or the new parts after a symlink."""
        fd = os.open(self.root, DIR_FLAGS)
        try:
            if not parts:
                resolved = Resolved(fd, None, [])
                fd = -1
                return resolved
            for index, name in enumerate(parts):
                last = index == len(parts) - 1
                try:
                    st: Optional[os.stat_result] = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                except NotADirectoryError:
                    raise GuestError(
                        "not_a_directory",
                        "%r is not a directory" % "/".join(parts[:index]),
                        path=path,
                    ) from None
                if st is not None and stat.S_ISLNK(st.st_mode) and (follow_final or not last):
                    target = os.readlink(name, dir_fd=fd)
                    return self._expand_link(parts[:index], target, parts[index + 1 :], path)
                if last:
                    resolved = Resolved(fd, name, parts)
                    fd = -1
                    return resolved
                if st is None:
                    if not create_dirs:
                        raise not_found("/".join(parts[: index + 1]))
                    try:
                        os.mkdir(name, 0o755, dir_fd=fd)
                        if self.owner is not None:
                            self.owner.own_entry(name, fd)
                    except FileExistsError:
                        pass  # made by a concurrent call; opened below like any directory
                elif not stat.S_ISDIR(st.st_mode):
                    raise GuestError(
                        "not_a_directory",
                        "%r is not a directory" % "/".join(parts[: index + 1]),
                        path=path,
                    )
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError as err:
                    # Swapped for a symlink or a file between stat and open: refuse, never follow.
                    raise GuestError(
                        "path_changed",
                        "%r changed while being resolved (%s); try again"
                        % ("/".join(parts[: index + 1]), err.strerror),
                        path=path,
                    ) from None
                os.close(fd)
                fd = child
            raise AssertionError("unreachable: the loop returns on the last component")
        finally:
            if fd >= 0:
                os.close(fd)

    def real_path(self, resolved: Resolved) -> str:
        """The absolute in-VM path of a resolution (for ``cwd`` of a process)."""
        base = os.readlink("/proc/self/fd/%d" % resolved.dir_fd)
        return base if resolved.name is None else posixpath.join(base, resolved.name)
