"""Walking a directory tree of any depth: iteratively, with a bounded number of open descriptors.

A project's commands can make a tree as deep as the filesystem allows (thousands of levels);
Python's recursion limit must not decide whether listing, searching, measuring or deleting it
works. The walk keeps a stack of frames (one per directory being visited) instead of recursing,
and holds at most ``MAX_OPEN_DIRS`` directory descriptors: the shallowest are closed when the
walk goes deeper, and reopened on the way back up through the child's ``..``, checked against
the identity (device, inode) the frame had, so a directory moved meanwhile fails the walk
instead of redirecting it. Every descent is an ``openat`` with ``O_NOFOLLOW``: symlinks are
reported, never followed.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Iterator, List, Optional, Set

from .errors import GuestError
from .paths import DIR_FLAGS

MAX_OPEN_DIRS = 32


class Frame:
    """A directory on the walk's stack: its children, which one is next, and its descriptor."""

    __slots__ = ("children", "fd", "ident", "index", "name", "parent", "prefix")

    def __init__(
        self, fd: int, name: str, parent: "Optional[Frame]", prefix: Optional[List[str]] = None
    ) -> None:
        self.fd: Optional[int] = fd
        self.name = name
        self.parent = parent
        self.prefix = prefix or []  # the root frame's path (the others derive theirs)
        st = os.fstat(fd)
        self.ident = (st.st_dev, st.st_ino)
        with os.scandir(fd) as it:
            self.children = sorted(entry.name for entry in it)
        self.index = 0

    def parts(self) -> List[str]:
        names = []
        frame: Optional[Frame] = self
        while frame is not None and frame.parent is not None:
            names.append(frame.name)
            frame = frame.parent
        root = frame.prefix if frame is not None else []
        return root + names[::-1]


class Entry:
    """One thing found by the walk; ``dir_fd`` holds it and is valid until the walk goes on."""

    __slots__ = ("dir_fd", "frame", "name", "st")

    def __init__(self, dir_fd: int, frame: Frame, name: str, st: os.stat_result) -> None:
        self.dir_fd = dir_fd
        self.frame = frame  # the directory it is in
        self.name = name
        self.st = st

    @property
    def parts(self) -> List[str]:
        return [*self.frame.parts(), self.name]

    @property
    def path(self) -> str:
        return "/".join(self.parts)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


def moved(path: str) -> GuestError:
    return GuestError(
        "path_changed",
        "%r was moved while being walked (another process changed the tree); try again"
        % (path or "."),
        path=path or ".",
    )


class Walk:
    """Pre-order, name-sorted walk under the open directory ``fd`` (which it takes over).

    Iterate for the entries; with ``post_order`` a directory comes after what it holds (for
    removing a tree). With ``deadline`` (a ``time.monotonic()`` value) the walk stops early and
    sets ``complete`` to False. ``close()`` releases every descriptor (also at the end).
    """

    def __init__(
        self,
        fd: int,
        prefix: List[str],
        recursive: bool = True,
        include_hidden: bool = True,
        skip_dirs: Optional[Set[str]] = None,
        deadline: Optional[float] = None,
        post_order: bool = False,
    ) -> None:
        self.recursive = recursive
        self.include_hidden = include_hidden
        self.skip_dirs = skip_dirs or set()
        self.deadline = deadline
        self.post_order = post_order
        self.complete = True
        try:
            self._stack = [Frame(fd, "", None, list(prefix))]
        except BaseException:
            os.close(fd)
            raise

    def __enter__(self) -> "Walk":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for frame in self._stack:
            if frame.fd is not None:
                os.close(frame.fd)
                frame.fd = None
        self._stack = []

    def _open_count(self) -> int:
        return sum(1 for frame in self._stack if frame.fd is not None)

    def _descend(self, parent: Frame, name: str) -> bool:
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent.fd)
        except OSError:
            return False  # gone, or swapped for something else: nothing to walk there
        self._stack.append(Frame(fd, name, parent))
        if self._open_count() > MAX_OPEN_DIRS:
            for frame in self._stack:
                if frame.fd is not None:
                    os.close(frame.fd)
                    frame.fd = None
                    break
        return True

    def _ascend(self) -> Frame:
        """Leave the deepest frame; the parent gets its descriptor back if it had lost it."""
        child = self._stack.pop()
        try:
            parent = self._stack[-1] if self._stack else None
            if parent is not None and parent.fd is None:
                assert child.fd is not None
                fd = os.open("..", DIR_FLAGS, dir_fd=child.fd)
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != parent.ident:
                    os.close(fd)
                    raise moved("/".join(parent.parts()))
                parent.fd = fd
        finally:
            if child.fd is not None:
                os.close(child.fd)
                child.fd = None
        return child

    def __iter__(self) -> Iterator[Entry]:
        try:
            while self._stack:
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self.complete = False
                    return
                frame = self._stack[-1]
                if frame.index >= len(frame.children):
                    done = self._ascend()
                    if self.post_order and self._stack:
                        parent = self._stack[-1]
                        assert parent.fd is not None
                        st = os.stat(done.name, dir_fd=parent.fd, follow_symlinks=False)
                        yield Entry(parent.fd, parent, done.name, st)
                    continue
                name = frame.children[frame.index]
                frame.index += 1
                if not self.include_hidden and name.startswith("."):
                    continue
                assert frame.fd is not None
                try:
                    st = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                descend = self.recursive and stat.S_ISDIR(st.st_mode)
                descend = descend and name not in self.skip_dirs
                if not (self.post_order and descend):
                    yield Entry(frame.fd, frame, name, st)
                if descend:
                    self._descend(frame, name)
        finally:
            self.close()


def remove_tree(path: str) -> bool:
    """Remove the directory ``path`` and everything in it, at any depth, never following a
    symlink; returns False when nothing was there. (For hosts too: ``shutil.rmtree`` recurses
    and fails on trees deeper than Python's recursion limit.)"""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        parent_fd = os.open(parent, DIR_FLAGS)
    except FileNotFoundError:
        return False
    try:
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            return False
        for entry in Walk(fd, [], post_order=True):
            if entry.is_dir:
                os.rmdir(entry.name, dir_fd=entry.dir_fd)
            else:
                os.unlink(entry.name, dir_fd=entry.dir_fd)
        os.rmdir(name, dir_fd=parent_fd)
        return True
    finally:
        os.close(parent_fd)
