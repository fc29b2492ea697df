"""File operations in the workspace: read, atomic write, append, edit, stat, list, mkdir, move,
remove (searching is :mod:`search`, measuring :mod:`usage`).

Blocking work runs in worker threads. Mutations hold one lock, so a compare-and-swap
(``if_match``) and the change that follows it are atomic with respect to every other file call.
Writes and edits go to a temporary file in the same directory, are fsynced, and renamed into
place, so a reader sees the old content or the new, never a mix. Appends write in place with
``O_APPEND`` (a command writing to the file through an open descriptor keeps writing to the
same file), in time that does not depend on the file's size. Trees of any depth are walked
iteratively (:mod:`walk`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import os
import stat
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import edits, methods
from .errors import GuestError, InvalidParams
from .methods import FsEdit, FsList, FsMkdir, FsMove, FsRead, FsRemove, FsStat, FsWrite, parse
from .paths import DIR_FLAGS, Resolved, Workspace, not_found
from .usage import UsageMeter
from .walk import Walk

# Non-blocking so a FIFO (or a device) named like a file never hangs the open; cleared once
# the descriptor is known to be a regular file.
FILE_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
CHUNK = 1024 * 1024
DEFAULT_MAX_READ = 16 * 1024 * 1024
HARD_MAX_READ = 64 * 1024 * 1024
ABSENT = "absent"
APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def _type_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _sha256_fd(fd: int) -> str:
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)


def _open_regular(res: Resolved) -> int:
    if res.name is None:
        raise GuestError("is_a_directory", "the workspace root is a directory", path=res.path)
    try:
        fd = os.open(res.name, FILE_READ_FLAGS, dir_fd=res.dir_fd)
    except FileNotFoundError:
        raise not_found(res.path) from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise GuestError(
                "path_changed", "%r changed while being opened; try again" % res.path
            ) from None
        raise
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.set_blocking(fd, True)
    else:
        os.close(fd)
        kind = (
            "is_a_directory"
            if stat.S_ISDIR(os.stat(res.name, dir_fd=res.dir_fd).st_mode)
            else "not_a_file"
        )
        raise GuestError(kind, "%r is not a regular file" % res.path, path=res.path)
    return fd


def _current_sha(res: Resolved) -> Optional[str]:
    """sha256 of the file at ``res``, or ``None`` when nothing is there."""
    st = res.lstat()
    if st is None:
        return None
    fd = _open_regular(res)
    try:
        return _sha256_fd(fd)
    finally:
        os.close(fd)


def _check_if_match(res: Resolved, if_match: Optional[str]) -> Optional[str]:
    """Refuse with a conflict unless the file's sha256 is ``if_match`` (``absent``: no file)."""
    if if_match is None:
        return None
    current = _current_sha(res)
    _compare(res.path, if_match, current)
    return current


def _compare(path: str, if_match: str, current: Optional[str]) -> None:
    expected = None if if_match == ABSENT else if_match
    if current != expected:
        raise GuestError(
            "conflict",
            "%r changed since you read it (expected %s, found %s); read it again and retry"
            % (path, if_match, current or ABSENT),
            path=path,
            expected=if_match,
            current_sha256=current,
        )


def _read_all(fd: int, size: int) -> bytes:
    chunks: List[bytes] = []
    while True:
        chunk = os.read(fd, max(CHUNK, size + 1))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def os_error(err: OSError, path: Any) -> GuestError:
    """An operating-system error as a kind the host understands."""
    where = " (%s)" % path if isinstance(path, str) else ""
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return GuestError(
            "no_space", "the workspace is full%s: %s; free space first" % (where, reason)
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return GuestError("permission_denied", "permission denied%s: %s" % (where, reason))
    if err.errno == errno.ENAMETOOLONG:
        return GuestError("invalid_path", "the path is too long%s" % where)
    if err.errno == errno.ENOENT:
        return GuestError("not_found", "no such file or directory%s" % where)
    return GuestError("io_error", "the file operation failed%s: %s" % (where, reason))


class Files:
    """Handlers for the ``fs.*`` methods."""

    def __init__(self, workspace: Workspace, meter: UsageMeter) -> None:
        self.workspace = workspace
        self.meter = meter
        self._mutation = threading.Lock()

    def handlers(self) -> Dict[str, Callable[[Dict[str, Any]], Any]]:
        return {
            methods.FS_READ: self._threaded(self.read),
            methods.FS_WRITE: self._threaded(self.write),
            methods.FS_EDIT: self._threaded(self.edit),
            methods.FS_STAT: self._threaded(self.stat),
            methods.FS_LIST: self._threaded(self.list),
            methods.FS_MKDIR: self._threaded(self.mkdir),
            methods.FS_MOVE: self._threaded(self.move),
            methods.FS_REMOVE: self._threaded(self.remove),
            methods.FS_USAGE: self._threaded(self.meter.usage),
        }

    @staticmethod
    def _threaded(
        fn: Callable[[Dict[str, Any]], Dict[str, Any]],
    ) -> Callable[[Dict[str, Any]], Any]:
        def guarded(params: Dict[str, Any]) -> Dict[str, Any]:
            try:
                return fn(params)
            except OSError as err:
                raise os_error(err, params.get("path")) from None

        async def run(params: Dict[str, Any]) -> Dict[str, Any]:
            loop = asyncio.get_event_loop()
            return await loop.run_in_executor(None, guarded, params)

        return run

    # -- read ---------------------------------------------------------------------------------

    def read(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(FsRead, params)
        path, offset, length = request.path, request.offset, request.length
        line_offset, line_limit = request.line_offset, request.line_limit
        max_bytes = min(
            DEFAULT_MAX_READ if request.max_bytes is None else request.max_bytes, HARD_MAX_READ
        )
        if offset < 0 or (length is not None and length < 0):
            raise InvalidParams("offset and length must not be negative")
        if (line_offset is not None and line_offset < 0) or (
            line_limit is not None and line_limit < 0
        ):
            raise InvalidParams("line_offset and line_limit must not be negative")
        with self.workspace.resolve(path) as res:
            fd = _open_regular(res)
        try:
            size = os.fstat(fd).st_size
            if line_offset is not None or line_limit is not None:
                return self._read_lines(fd, res.path, line_offset or 0, line_limit, max_bytes)
            want = size - offset if length is None else length
            want = max(0, min(want, max_bytes))
            os.lseek(fd, offset, os.SEEK_SET)
            data = b""
            while len(data) < want:
                chunk = os.read(fd, want - len(data))
                if not chunk:
                    break
                data += chunk
            sha = _sha256_fd(fd)
            return {
                "path": res.path,
                "data": base64.b64encode(data).decode("ascii"),
                "size": size,
                "sha256": sha,
                "offset": offset,
                "length": len(data),
                "eof": offset + len(data) >= size,
            }
        finally:
            os.close(fd)

    def _read_lines(
        self, fd: int, path: str, first: int, limit: Optional[int], max_bytes: int
    ) -> Dict[str, Any]:
        digest = hashlib.sha256()
        size = 0
        picked: List[bytes] = []
        picked_bytes = 0
        total = 0
        truncated = False

        def consider(line: bytes) -> None:
            nonlocal picked_bytes, total, truncated
            wanted = total >= first and (limit is None or len(picked) < limit)
            if wanted and not truncated:
                if picked_bytes + len(line) > max_bytes:
                    truncated = True
                else:
                    picked.append(line)
                    picked_bytes += len(line)
            total += 1

        pending = b""
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                consider(line + b"\n")
        if pending:
            consider(pending)
        return {
            "path": path,
            "data": base64.b64encode(b"".join(picked)).decode("ascii"),
            "size": size,
            "sha256": digest.hexdigest(),
            "line_offset": first,
            "line_count": len(picked),
            "total_lines": total,
            "eof": first + len(picked) >= total and not truncated,
        }

    # -- write --------------------------------------------------------------------------------

    def write(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(FsWrite, params)
        path, encoded, if_match = request.path, request.data, request.if_match
        create_parents, mode = request.create_parents, request.mode
        try:
            data = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise InvalidParams("data must be base64") from None
        with self._mutation, self.workspace.resolve(path, create_dirs=create_parents) as res:
            if res.name is None:
                raise GuestError("is_a_directory", "cannot write to the workspace root", path=path)
            previous = _check_if_match(res, if_match)
            existing = res.lstat()
            if existing is not None and not stat.S_ISREG(existing.st_mode):
                raise GuestError(
                    "not_a_file", "%r exists and is not a regular file" % res.path, path=res.path
                )
            if request.append and existing is not None:
                size, blocks = self._append(res, data)
                sha: Optional[str] = None  # hashing the whole file would make appends linear
            else:
                if mode is None:
                    mode = stat.S_IMODE(existing.st_mode) if existing is not None else 0o644
                sha, blocks = self._replace(res, data, mode)
                size = len(data)
            self.meter.account(
                (blocks - (existing.st_blocks if existing is not None else 0)) * 512,
                0 if existing is not None else 1,
            )
        return {
            "path": res.path,
            "sha256": sha,
            "size": size,
            "created": existing is None,
            "previous_sha256": previous,
            "previous_size": existing.st_size if existing is not None else 0,
        }

    def _append(self, res: Resolved, data: bytes) -> Tuple[int, int]:
        """Add ``data`` at the end of the file in place; returns its new size and blocks."""
        assert res.name is not None
        try:
            fd = os.open(res.name, APPEND_FLAGS, dir_fd=res.dir_fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENXIO):
                raise GuestError(
                    "not_a_file", "%r is not a regular file" % res.path, path=res.path
                ) from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since it was looked at
                raise GuestError("not_a_file", "%r is not a regular file" % res.path, path=res.path)
            os.set_blocking(fd, True)
            _write_all(fd, data)
            os.fsync(fd)
            st = os.fstat(fd)
            return st.st_size, st.st_blocks
        finally:
            os.close(fd)

    def _replace(self, res: Resolved, data: bytes, mode: int) -> Tuple[str, int]:
        """Put ``data`` in place atomically; returns its sha256 and the blocks it takes."""
        assert res.name is not None
        tmp = ".%s.%d.%d.pvm-tmp" % (res.name[:64], os.getpid(), threading.get_ident())
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
            0o600,
            dir_fd=res.dir_fd,
        )
        try:
            try:
                _write_all(fd, data)
                if self.workspace.owner is not None:
                    self.workspace.owner.own_fd(fd)
                os.fchmod(fd, mode)
                os.fsync(fd)
                blocks = os.fstat(fd).st_blocks
            finally:
                os.close(fd)
            os.rename(tmp, res.name, src_dir_fd=res.dir_fd, dst_dir_fd=res.dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=res.dir_fd)
            except OSError:
                pass
            raise
        os.fsync(res.dir_fd)
        return hashlib.sha256(data).hexdigest(), blocks

    # -- edit ---------------------------------------------------------------------------------

    def edit(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(FsEdit, params)
        if not request.edits:
            raise InvalidParams("edits is empty; give at least one {old_text, new_text}")
        max_file = min(request.max_file_bytes or HARD_MAX_READ, HARD_MAX_READ)
        max_diff = edits.DEFAULT_MAX_DIFF_BYTES
        if request.max_diff_bytes is not None:
            max_diff = max(0, min(request.max_diff_bytes, 4 * edits.DEFAULT_MAX_DIFF_BYTES))
        # A dry run changes nothing: it needs no lock, only one consistent read.
        lock = self._mutation if not request.dry_run else contextlib.nullcontext()
        with lock, self.workspace.resolve(request.path) as res:
            fd = _open_regular(res)
            try:
                st = os.fstat(fd)
                if st.st_size > max_file:
                    raise GuestError(
                        "too_large",
                        "%s is larger than %d bytes" % (res.path, max_file),
                        path=res.path,
                        size=st.st_size,
                        limit=max_file,
                        what="file",
                    )
                wanted = edits.encoded(request.edits, st.st_size)
                before = _read_all(fd, st.st_size)
            finally:
                os.close(fd)
            previous = hashlib.sha256(before).hexdigest()
            if request.if_match is not None:
                _compare(res.path, request.if_match, previous)
            edits.check_text(before, res.path)
            after, replacements = edits.apply_edits(before, wanted, res.path, max_file)
            growth = len(after) - len(before)
            if request.max_growth_bytes is not None and growth > request.max_growth_bytes:
                raise GuestError(
                    "too_large",
                    "the edit would add %d bytes to %s, and only %d bytes of storage are left; "
                    "free space first" % (growth, res.path, max(request.max_growth_bytes, 0)),
                    path=res.path,
                    size=len(after),
                    limit=len(before) + request.max_growth_bytes,
                    what="storage",
                )
            diff, cut = edits.unified_diff(before, after, res.path, max_diff)
            sha = previous
            if not request.dry_run:
                sha, blocks = self._replace(res, after, stat.S_IMODE(st.st_mode))
                self.meter.account((blocks - st.st_blocks) * 512)
        return {
            "path": res.path,
            "sha256": sha,
            "previous_sha256": previous,
            "size": len(after) if not request.dry_run else len(before),
            "previous_size": len(before),
            "replacements": replacements,
            "diff": diff,
            "diff_truncated": cut,
            "applied": not request.dry_run,
        }

    # -- metadata -----------------------------------------------------------------------------

    def stat(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(FsStat, params)
        path, want_hash = request.path, request.sha256
        try:
            res = self.workspace.resolve(path, follow_final=request.follow)
        except GuestError as err:
            if err.kind == "not_found":  # a missing parent directory: the path does not exist
                return {"path": path, "exists": False}
            raise
        with res:
            st = res.lstat()
            if st is None:
                return {"path": res.path, "exists": False}
            info = _entry(res.path, st)
            info["exists"] = True
            if want_hash and stat.S_ISREG(st.st_mode):
                info["sha256"] = _current_sha(res)
            return info

    def list(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(FsList, params)
        path, recursive = request.path, request.recursive
        max_entries = max(1, min(request.max_entries, 20000))
        entries: List[Dict[str, Any]] = []
        truncated = False
        with self.workspace.resolve(path) as res:
            st = res.lstat()
            if st is None:
                raise not_found(res.path)
            if not stat.S_ISDIR(st.st_mode):
                return {"path": res.path, "entries": [_entry(res.path, st)], "truncated": False}
            walk = Walk(open_dir(res), res.parts, recursive, request.include_hidden)
        with walk:
            for found in walk:
                if len(entries) >= max_entries:
                    truncated = True
                    break
                entries.append(_entry(found.path, found.st))
        return {"path": res.path, "entries": entries, "truncated": truncated}

    # -- mutations ----------------------------------------------------------------------------

    def mkdir(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(FsMkdir, params)
        path, parents = request.path, request.parents
        with self._mutation, self.workspace.resolve(path, create_dirs=parents) as res:
            if res.name is None:
                return {"path": res.path, "created": False}
            st = res.lstat()
            if st is not None:
                if stat.S_ISDIR(st.st_mode):
                    return {"path": res.path, "created": False}
                raise GuestError(
                    "exists", "%r exists and is not a directory" % res.path, path=res.path
                )
            os.mkdir(res.name, 0o755, dir_fd=res.dir_fd)
            if self.workspace.owner is not None:
                self.workspace.owner.own_entry(res.name, res.dir_fd)
            self.meter.account(0, 1)
            return {"path": res.path, "created": True}

    def move(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(FsMove, params)
        source, destination, overwrite = request.source, request.destination, request.overwrite
        with self._mutation, self.workspace.resolve(source, follow_final=False) as src:
            if src.name is None or src.lstat() is None:
                raise (
                    not_found(src.path)
                    if src.name is not None
                    else GuestError("invalid_path", "cannot move the workspace root")
                )
            with self.workspace.resolve(destination, follow_final=False, create_dirs=True) as dst:
                if dst.name is None:
                    raise GuestError("exists", "cannot replace the workspace root")
                replaced = dst.lstat()
                if replaced is not None and not overwrite:
                    raise GuestError(
                        "exists",
                        "%r already exists; pass overwrite=true to replace it" % dst.path,
                        path=dst.path,
                    )
                os.rename(src.name, dst.name, src_dir_fd=src.dir_fd, dst_dir_fd=dst.dir_fd)
                if replaced is not None:
                    self.meter.account(-replaced.st_blocks * 512, -1)
                os.fsync(dst.dir_fd)
                return {"source": src.path, "destination": dst.path}

    def remove(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(FsRemove, params)
        path, recursive, if_match = request.path, request.recursive, request.if_match
        missing_ok = request.missing_ok
        with self._mutation, self.workspace.resolve(path, follow_final=False) as res:
            if res.name is None:
                raise GuestError("invalid_path", "refusing to remove the workspace root")
            st = res.lstat()
            if st is None:
                if missing_ok and if_match in (None, ABSENT):
                    return {"path": res.path, "removed": False}
                raise not_found(res.path)
            if if_match is not None:
                _check_if_match(res, if_match)
            if stat.S_ISDIR(st.st_mode):
                if not recursive:
                    try:
                        os.rmdir(res.name, dir_fd=res.dir_fd)
                    except OSError as err:
                        if err.errno == errno.ENOTEMPTY:
                            raise GuestError(
                                "not_empty",
                                "%r is a non-empty directory; pass recursive=true" % res.path,
                                path=res.path,
                            ) from None
                        raise
                else:
                    self._remove_tree(res.dir_fd, res.name)
            else:
                os.unlink(res.name, dir_fd=res.dir_fd)
            self.meter.account(-st.st_blocks * 512, -1)
            os.fsync(res.dir_fd)
            return {"path": res.path, "removed": True}

    def _remove_tree(self, parent_fd: int, name: str) -> None:
        """Remove a directory and everything in it, at any depth, counting what is freed."""
        freed = 0
        count = 0
        try:
            for entry in Walk(os.open(name, DIR_FLAGS, dir_fd=parent_fd), [], post_order=True):
                if entry.is_dir:
                    os.rmdir(entry.name, dir_fd=entry.dir_fd)
                else:
                    os.unlink(entry.name, dir_fd=entry.dir_fd)
                freed += entry.st.st_blocks * 512
                count += 1
        finally:
            self.meter.account(-freed, -count)
        os.rmdir(name, dir_fd=parent_fd)


def _entry(path: str, st: os.stat_result) -> Dict[str, Any]:
    return {
        "path": path,
        "type": _type_of(st.st_mode),
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": st.st_mtime,
    }


def open_dir(res: Resolved) -> int:
    if res.name is None:
        return os.dup(res.dir_fd)
    try:
        return os.open(res.name, DIR_FLAGS, dir_fd=res.dir_fd)
    except OSError as err:
        raise GuestError(
            "not_a_directory", "%r is not a directory (%s)" % (res.path, err.strerror)
        ) from None
