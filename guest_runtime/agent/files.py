"""File operations in the workspace: read, atomic write, stat, list, mkdir, move, remove, search.

Blocking work runs in worker threads. Mutations hold one lock, so a compare-and-swap
(``if_match``) and the rename that follows it are atomic with respect to every other file call.
Writes go to a temporary file in the same directory, are fsynced, and renamed into place, so a
reader sees the old content or the new, never a mix.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import fnmatch
import hashlib
import os
import re
import stat
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from . import methods
from .errors import GuestError, InvalidParams
from .methods import FsList, FsMkdir, FsMove, FsRead, FsRemove, FsSearch, FsStat, FsWrite, parse
from .paths import DIR_FLAGS, Resolved, Workspace, not_found

# Non-blocking so a FIFO (or a device) named like a file never hangs the open; cleared once
# the descriptor is known to be a regular file.
FILE_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
CHUNK = 1024 * 1024
DEFAULT_MAX_READ = 16 * 1024 * 1024
HARD_MAX_READ = 64 * 1024 * 1024
ABSENT = "absent"
SEARCH_SKIP_DIRS = {".git", ".hg", ".svn"}
SEARCH_MAX_FILE = 8 * 1024 * 1024


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
    expected = None if if_match == ABSENT else if_match
    if current != expected:
        raise GuestError(
            "conflict",
            "%r changed since you read it (expected %s, found %s); read it again and retry"
            % (res.path, if_match, current or ABSENT),
            path=res.path,
            expected=if_match,
            current_sha256=current,
        )
    return current


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

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._mutation = threading.Lock()

    def handlers(self) -> Dict[str, Callable[[Dict[str, Any]], Any]]:
        return {
            methods.FS_READ: self._threaded(self.read),
            methods.FS_WRITE: self._threaded(self.write),
            methods.FS_STAT: self._threaded(self.stat),
            methods.FS_LIST: self._threaded(self.list),
            methods.FS_MKDIR: self._threaded(self.mkdir),
            methods.FS_MOVE: self._threaded(self.move),
            methods.FS_REMOVE: self._threaded(self.remove),
            methods.FS_SEARCH: self._threaded(self.search),
            methods.FS_USAGE: self._threaded(self.usage),
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
        create_parents, append, mode = request.create_parents, request.append, request.mode
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
            if append and existing is not None:
                fd = _open_regular(res)
                try:
                    old = b""
                    while True:
                        chunk = os.read(fd, CHUNK)
                        if not chunk:
                            break
                        old += chunk
                finally:
                    os.close(fd)
                data = old + data
            if mode is None:
                mode = stat.S_IMODE(existing.st_mode) if existing is not None else 0o644
            sha = self._replace(res, data, mode)
        return {
            "path": res.path,
            "sha256": sha,
            "size": len(data),
            "created": existing is None,
            "previous_sha256": previous,
            "previous_size": existing.st_size if existing is not None else 0,
        }

    def _replace(self, res: Resolved, data: bytes, mode: int) -> str:
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
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fchmod(fd, mode)
                os.fsync(fd)
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
        return hashlib.sha256(data).hexdigest()

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
        include_hidden = request.include_hidden
        entries: List[Dict[str, Any]] = []
        truncated = False
        with self.workspace.resolve(path) as res:
            st = res.lstat()
            if st is None:
                raise not_found(res.path)
            if not stat.S_ISDIR(st.st_mode):
                return {"path": res.path, "entries": [_entry(res.path, st)], "truncated": False}
            fd = _open_dir(res)
            for entry in _walk(fd, res.parts, recursive, include_hidden):
                if len(entries) >= max_entries:
                    truncated = True
                    break
                entries.append(entry)
        return {"path": res.path, "entries": entries, "truncated": truncated}

    def usage(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """Bytes used by the workspace (allocated blocks), and the filesystem's free space."""
        started = time.monotonic()
        total = 0
        files = 0
        fd = os.open(self.workspace.root, DIR_FLAGS)
        for entry in _walk(fd, [], True, True, with_blocks=True):
            total += entry.pop("blocks", 0) * 512
            files += 1
        vfs = os.statvfs(self.workspace.root)
        return {
            "used_bytes": total,
            "files": files,
            "fs_total_bytes": vfs.f_blocks * vfs.f_frsize,
            "fs_free_bytes": vfs.f_bavail * vfs.f_frsize,
            "elapsed_ms": int((time.monotonic() - started) * 1000),
        }

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
                if dst.lstat() is not None and not overwrite:
                    raise GuestError(
                        "exists",
                        "%r already exists; pass overwrite=true to replace it" % dst.path,
                        path=dst.path,
                    )
                os.rename(src.name, dst.name, src_dir_fd=src.dir_fd, dst_dir_fd=dst.dir_fd)
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
                    _remove_tree(res.dir_fd, res.name)
            else:
                os.unlink(res.name, dir_fd=res.dir_fd)
            os.fsync(res.dir_fd)
            return {"path": res.path, "removed": True}

    # -- search -------------------------------------------------------------------------------

    def search(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(FsSearch, params)
        pattern, path, glob = request.pattern, request.path, request.glob
        use_regex, ignore_case = request.regex, request.ignore_case
        max_results = max(1, min(request.max_results, 5000))
        if not pattern and not glob:
            raise InvalidParams("give a pattern to search file contents, or a glob to match names")
        flags = re.IGNORECASE if ignore_case else 0
        try:
            matcher = re.compile(pattern if use_regex else re.escape(pattern), flags)
        except re.error as err:
            raise InvalidParams("invalid regular expression: %s" % err) from None
        matches: List[Dict[str, Any]] = []
        scanned = 0
        truncated = False
        with self.workspace.resolve(path) as res:
            if res.lstat() is None:
                raise not_found(res.path)
            fd = _open_dir(res)
            for entry in _walk(fd, res.parts, True, True, skip_dirs=SEARCH_SKIP_DIRS, with_fd=True):
                entry_fd = entry.pop("fd")
                try:
                    if entry["type"] != "file":
                        continue
                    name = entry["path"].rsplit("/", 1)[-1]
                    if glob and not (
                        fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(entry["path"], glob)
                    ):
                        continue
                    if not pattern:
                        matches.append({"path": entry["path"]})
                    else:
                        scanned += 1
                        for number, text in _matching_lines(entry_fd, entry["size"], matcher):
                            matches.append({"path": entry["path"], "line": number, "text": text})
                            if len(matches) >= max_results:
                                break
                    if len(matches) >= max_results:
                        truncated = True
                        break
                finally:
                    if entry_fd is not None:
                        os.close(entry_fd)
        return {"matches": matches, "files_scanned": scanned, "truncated": truncated}


def _entry(path: str, st: os.stat_result) -> Dict[str, Any]:
    return {
        "path": path,
        "type": _type_of(st.st_mode),
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": st.st_mtime,
    }


def _open_dir(res: Resolved) -> int:
    if res.name is None:
        return os.dup(res.dir_fd)
    try:
        return os.open(res.name, DIR_FLAGS, dir_fd=res.dir_fd)
    except OSError as err:
        raise GuestError(
            "not_a_directory", "%r is not a directory (%s)" % (res.path, err.strerror)
        ) from None


def _walk(
    fd: int,
    prefix: List[str],
    recursive: bool,
    include_hidden: bool,
    skip_dirs: Optional[Set[str]] = None,
    with_fd: bool = False,
    with_blocks: bool = False,
) -> Iterator[Dict[str, Any]]:
    """Entries under the open directory ``fd`` (which it closes), sorted, never following links."""
    try:
        with os.scandir(fd) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            if not include_hidden and child.name.startswith("."):
                continue
            try:
                st = child.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            parts = [*prefix, child.name]
            entry = _entry("/".join(parts), st)
            if with_blocks:
                entry["blocks"] = st.st_blocks
            if with_fd:
                entry["fd"] = None
                if stat.S_ISREG(st.st_mode):
                    try:
                        entry_fd = os.open(child.name, FILE_READ_FLAGS, dir_fd=fd)
                    except OSError:
                        continue
                    if not stat.S_ISREG(os.fstat(entry_fd).st_mode):  # swapped meanwhile
                        os.close(entry_fd)
                        continue
                    os.set_blocking(entry_fd, True)
                    entry["fd"] = entry_fd
            yield entry
            if recursive and stat.S_ISDIR(st.st_mode) and child.name not in (skip_dirs or ()):
                try:
                    sub = os.open(child.name, DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                yield from _walk(sub, parts, True, include_hidden, skip_dirs, with_fd, with_blocks)
    finally:
        os.close(fd)


def _matching_lines(fd: int, size: int, matcher: "re.Pattern[str]") -> Iterator[Tuple[int, str]]:
    if size > SEARCH_MAX_FILE:
        return
    data = b""
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            break
        data += chunk
    if b"\x00" in data[:8192]:
        return
    text = data.decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        if matcher.search(line):
            yield number, line[:500]


def _remove_tree(parent_fd: int, name: str) -> None:
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    try:
        with os.scandir(fd) as it:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for child, is_dir in children:
            if is_dir:
                _remove_tree(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
