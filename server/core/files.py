"""File operations on a project's workspace, safe for several agents at once.

Reads go straight to the guest. Writes, edits, moves and deletes take the project's mutation
lock, check advisory path locks, and honour ``if_match`` (compare-and-swap in the guest); a
stale ``if_match`` fails with a conflict that names the current sha256 and who changed the file
last. The event recording a change is committed before the next write of the project starts.
Edits are done in the guest (``fs.edit``), where their work is bounded: the server only
forwards them, so no edit can hold up anyone else's calls.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import posixpath
import secrets
from collections.abc import AsyncIterable, Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal

import anyio

from guest_runtime.agent.methods import TextEdit
from guest_runtime.client import GuestClient
from guest_runtime.errors import (
    ContentTooLarge,
    GuestError,
    GuestUnreachable,
    InvalidRequest,
    WriteConflict,
)
from guest_runtime.protocol import FileData, FileEdit, WriteResult
from server.core.access import Grant
from server.core.caller import Caller
from server.core.gate import Gate
from server.core.journal import Journal
from server.core.lifecycle import Lifecycle
from server.core.path_locks import PathLockTable
from server.core.requests import (
    DeletePath,
    EditFile,
    ListFiles,
    MovePath,
    ReadFile,
    SearchFiles,
    WriteFile,
)
from server.core.results import (
    EditResult,
    FileEntry,
    FileList,
    FileRead,
    FileWrite,
    MoveResult,
    PathRemoval,
    SearchHit,
    SearchResults,
)
from server.core.runtime import Runtimes
from server.core.storage import StorageGuard
from server.domain.config import Limits
from server.domain.errors import Conflict, InvalidInput, LimitExceeded, StaleWrite
from server.domain.events import FileDeleted, FileEdited, FileMoved, FileWritten
from server.domain.models import Project
from server.store import Store

__all__ = ["SMALL_READ_BYTES", "Files", "upload_name"]

# Reads up to this size are served at once; larger ones take a large-read slot.
SMALL_READ_BYTES = 1024 * 1024


def upload_name(path: str) -> str:
    """Where an upload to ``path`` gathers: a hidden name beside it (the same filesystem, so
    moving it into place is one rename), unique per upload."""
    folder, name = posixpath.split(path.rstrip("/"))
    return posixpath.join(folder, f".{name[:64]}.{secrets.token_hex(6)}.pvm-upload")


class _Gathering:
    """The hidden file an upload gathers in, which commands in the VM can reach too: every
    write to it and the file that is finally placed are checked to be the upload's own."""

    def __init__(self, path: str, temp: str) -> None:
        self.path = path
        self.temp = temp
        self.resolved: str | None = None

    def _tampered(self) -> Conflict:
        return Conflict(
            f"the hidden file gathering the upload to {self.path} ({self.temp}) was changed "
            "by someone else while the upload arrived (a command in the VM?); nothing was "
            f"placed at {self.path}: upload it again"
        )

    async def write(
        self, client: GuestClient, chunk: bytes, so_far: str, mode: int | None
    ) -> WriteResult:
        try:
            written = await client.write_file(
                self.temp, chunk, append=so_far != "absent", if_match=so_far, mode=mode
            )
        except WriteConflict:
            raise self._tampered() from None
        if self.resolved is None:
            self.resolved = written.path
        elif written.path != self.resolved:
            raise self._tampered()
        return written

    async def check_whole(self, client: GuestClient, sha256: str) -> None:
        """Before it is placed: the gathering file is a regular file with the upload's bytes."""
        found = await client.stat(self.temp, sha256=True, follow=False)
        if not found.exists or found.type != "file" or found.sha256 != sha256:
            raise self._tampered()


class Files:
    def __init__(
        self,
        store: Store,
        journal: Journal,
        gate: Gate,
        lifecycle: Lifecycle,
        runtimes: Runtimes,
        storage: StorageGuard,
        locks: PathLockTable,
        limits: Limits,
    ) -> None:
        self._store = store
        self._journal = journal
        self._gate = gate
        self._lifecycle = lifecycle
        self._runtimes = runtimes
        self._storage = storage
        self._locks = locks
        self._limits = limits
        self._large_reads = anyio.CapacityLimiter(limits.concurrent_large_reads)

    async def _open(self, caller: Caller, project_id: str) -> tuple[Grant, GuestClient]:
        grant = await self._gate.admit(caller, project_id)
        return grant, await self._lifecycle.client(grant.project, caller.report)

    async def _conflict(self, project_id: str, err: WriteConflict) -> StaleWrite:
        path = str(err.data.get("path", ""))
        last = await self._store.events.last_for_path(project_id, path)
        who = f"; last changed by {last.agent_id} at {last.created_at.isoformat()}" if last else ""
        return StaleWrite(
            f"{path} changed since you read it: it now has sha256 "
            f"{err.current_sha256 or 'absent (deleted)'}{who}. Read it again, then retry with "
            "the new sha256 as if_match",
            current_sha256=err.current_sha256,
            changed_by=last.agent_id if last else None,
        )

    # -- reading ------------------------------------------------------------------------------

    async def _read_bounded(self, read: Callable[[int], Awaitable[FileData]]) -> FileData:
        """``read(max_bytes)``: small reads straight away; one that turns out large waits for
        one of a few large-read slots, so concurrent big reads cannot exhaust the server."""
        small = min(SMALL_READ_BYTES, self._limits.max_file_bytes)
        data = await read(small)
        if data.eof or small >= self._limits.max_file_bytes:
            return data
        async with self._large_reads:
            return await read(self._limits.max_file_bytes)

    async def read(self, caller: Caller, request: ReadFile) -> FileRead:
        grant, client = await self._open(caller, request.project_id)
        offset, limit, path = request.offset, request.limit, request.path
        if request.encoding == "base64":
            start = offset or 0
            if start < 0 or (limit is not None and limit < 0):
                raise InvalidInput("offset and limit must not be negative")
            data = await self._read_bounded(
                lambda most: client.read_file(path, offset=start, length=limit, max_bytes=most)
            )
            return FileRead(
                project_id=grant.project_id,
                path=data.path,
                content=base64.b64encode(data.data).decode(),
                encoding="base64",
                sha256=data.sha256,
                size=data.size,
                offset=start,
                truncated=not data.eof,
            )
        first_line = 1 if offset is None else offset
        if first_line < 1 or (limit is not None and limit < 1):
            raise InvalidInput("offset is a line number counting from 1; limit must be >= 1")
        data = await self._read_bounded(
            lambda most: client.read_file(
                path, line_offset=first_line - 1, line_limit=limit, max_bytes=most
            )
        )
        used: Literal["utf-8", "base64"]
        try:
            content, used = data.data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            if request.encoding == "utf-8":
                raise InvalidInput(
                    f"{data.path} is not valid UTF-8; read it with encoding='base64'"
                ) from None
            content, used = base64.b64encode(data.data).decode(), "base64"
        return FileRead(
            project_id=grant.project_id,
            path=data.path,
            content=content,
            encoding=used,
            sha256=data.sha256,
            size=data.size,
            offset=first_line,
            total_lines=data.total_lines,
            lines_returned=data.line_count,
            truncated=not data.eof,
        )

    async def list(self, caller: Caller, request: ListFiles) -> FileList:
        grant, client = await self._open(caller, request.project_id)
        listing = await client.list_dir(
            request.path,
            recursive=request.recursive,
            include_hidden=request.include_hidden,
            max_entries=request.max_entries,
        )
        entries = [
            FileEntry(
                path=entry.path,
                type=entry.type,
                size=entry.size,
                modified_at=datetime.fromtimestamp(entry.mtime, UTC),
            )
            for entry in listing.entries
        ]
        return FileList(
            project_id=grant.project_id,
            path=listing.path,
            entries=entries,
            truncated=listing.truncated,
        )

    async def search(self, caller: Caller, request: SearchFiles) -> SearchResults:
        grant, client = await self._open(caller, request.project_id)
        found = await client.search(
            request.pattern,
            path=request.path,
            regex=request.regex,
            ignore_case=request.ignore_case,
            glob=request.glob,
            max_results=request.max_results,
            timeout_s=request.timeout_s,
        )
        return SearchResults(
            project_id=grant.project_id,
            matches=[SearchHit(path=m.path, line=m.line, text=m.text) for m in found.matches],
            files_scanned=found.files_scanned,
            truncated=found.truncated,
        )

    # -- changing -----------------------------------------------------------------------------

    async def _put(
        self,
        project: Project,
        client: GuestClient,
        path: str,
        data: bytes,
        if_match: str | None,
        append: bool,
    ) -> WriteResult:
        """Write within the storage limit; a stale ``if_match`` becomes a named conflict.
        (The caller holds the project's mutation lock and records the event.)"""
        await self._storage.check_write(project, client, path, len(data), append)
        try:
            written = await client.write_file(path, data, if_match=if_match, append=append)
        except WriteConflict as err:
            raise await self._conflict(project.project_id, err) from err
        self._storage.wrote(project.project_id, written.previous_size, written.size)
        return written

    def _decode(self, content: str, encoding: str) -> bytes:
        if encoding == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInput("content is not valid base64") from None
        elif encoding in ("utf-8", "utf8", "text"):
            data = content.encode("utf-8")
        else:
            raise InvalidInput(f"encoding must be 'utf-8' or 'base64', not {encoding!r}")
        limit = self._limits.max_file_bytes
        if len(data) > limit:
            raise LimitExceeded(
                f"the content is {len(data)} bytes; one write takes at most {limit} bytes. "
                "Write it in parts with append, or produce it inside the VM with run_command"
            )
        return data

    async def write(self, caller: Caller, request: WriteFile) -> FileWrite:
        data = self._decode(request.content, request.encoding)
        grant, client = await self._open(caller, request.project_id)
        project_id = grant.project_id
        async with self._runtimes.of(project_id).mutation:
            await self._locks.check_write(project_id, caller.agent_id, client, request.path)
            written = await self._put(
                grant.project, client, request.path, data, request.if_match, request.append
            )
            await self._journal.record(
                project_id,
                caller.agent_id,
                FileWritten(path=written.path, sha256=written.sha256, size=written.size),
            )
        return FileWrite(
            project_id=project_id,
            path=written.path,
            sha256=written.sha256,
            size=written.size,
            created=written.created,
        )

    async def write_stream(
        self, caller: Caller, request: WriteFile, chunks: AsyncIterable[bytes]
    ) -> FileWrite:
        """A write whose content arrives in pieces (an HTTP upload), never held whole.

        The pieces gather under a hidden name beside the file; only when all have arrived is
        it moved into place, under the project's mutation lock and with ``if_match`` checked
        then, so no reader ever sees a half-written file. A failed or abandoned upload leaves
        nothing behind. Every piece re-admits the caller: a member removed mid-upload stops.
        """
        if request.content or request.append or request.encoding != "utf-8":
            raise InvalidInput("a streamed write takes its content from the stream only")
        grant, client = await self._open(caller, request.project_id)
        project_id, path, limit = grant.project_id, request.path, self._limits.max_file_bytes
        await self._locks.check_write(project_id, caller.agent_id, client, path)
        target = await client.stat(path)
        mode = target.mode & 0o7777 if target.exists and target.mode is not None else None
        temp = upload_name(path)
        digest, size, placed = hashlib.sha256(), 0, False
        gathering = _Gathering(path, temp)
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > limit:
                    raise LimitExceeded(
                        f"the upload to {path} is larger than {limit} bytes, the most one file "
                        "write takes here; produce a larger file inside the VM with run_command"
                    )
                grant = await self._gate.admit(caller, project_id)
                await self._storage.check_write(grant.project, client, temp, len(chunk), True)
                # Each piece lands only on what the earlier ones left (their sha256): a file
                # put in the gathering file's place meanwhile is never written through.
                so_far = digest.hexdigest() if size > len(chunk) else "absent"
                written = await gathering.write(client, chunk, so_far, mode)
                self._storage.wrote(project_id, written.previous_size, written.size)
                digest.update(chunk)
            if size == 0:
                await gathering.write(client, b"", "absent", mode)
            async with self._runtimes.of(project_id).mutation:
                await gathering.check_whole(client, digest.hexdigest())
                await self._gate.admit(caller, project_id)
                await self._locks.check_write(project_id, caller.agent_id, client, path)
                current = await client.stat(path, sha256=request.if_match is not None)
                if request.if_match is not None:
                    expected = None if request.if_match == "absent" else request.if_match
                    found = current.sha256 if current.exists else None
                    if found != expected:
                        raise await self._conflict(
                            project_id,
                            WriteConflict(
                                "stale if_match", {"path": path, "current_sha256": found}
                            ),
                        )
                _, resolved = await client.move(temp, path, overwrite=True)
                placed = True
                self._storage.forget(project_id)
                sha256 = digest.hexdigest()
                await self._journal.record(
                    project_id,
                    caller.agent_id,
                    FileWritten(path=resolved, sha256=sha256, size=size),
                )
        finally:
            if not placed:
                with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                    try:
                        await client.remove(temp, missing_ok=True)
                    except (GuestError, GuestUnreachable):
                        pass  # the VM went away: its workspace is the driver's to clean
                self._storage.forget(project_id)
        return FileWrite(
            project_id=project_id,
            path=resolved,
            sha256=sha256,
            size=size,
            created=not current.exists,
        )

    async def edit(self, caller: Caller, request: EditFile) -> EditResult:
        if not request.edits:
            raise InvalidInput("edits is empty; give at least one {old_text, new_text}")
        grant, client = await self._open(caller, request.project_id)
        project_id = grant.project_id
        if request.dry_run:  # changes nothing: no lock to take, no storage to check
            edited = await self._edit_in_guest(grant.project, client, request, None)
        else:
            async with self._runtimes.of(project_id).mutation:
                await self._locks.check_write(project_id, caller.agent_id, client, request.path)
                room = await self._storage.room(grant.project, client)
                edited = await self._edit_in_guest(grant.project, client, request, room)
                self._storage.wrote(project_id, edited.previous_size, edited.size)
                await self._journal.record(
                    project_id,
                    caller.agent_id,
                    FileEdited(
                        path=edited.path, sha256=edited.sha256, replacements=edited.replacements
                    ),
                )
        return EditResult(
            project_id=project_id,
            path=edited.path,
            sha256=edited.sha256,
            replacements=edited.replacements,
            diff=edited.diff,
            diff_truncated=edited.diff_truncated,
            applied=edited.applied,
        )

    async def _edit_in_guest(
        self, project: Project, client: GuestClient, request: EditFile, room: int | None
    ) -> FileEdit:
        """``fs.edit``, its refusals turned into the service's errors."""
        edits = [TextEdit(e.old_text, e.new_text, e.replace_all) for e in request.edits]
        try:
            return await client.edit_file(
                request.path,
                edits,
                if_match=request.if_match,
                dry_run=request.dry_run,
                max_file_bytes=self._limits.max_file_bytes,
                max_growth_bytes=room,
            )
        except WriteConflict as err:
            raise await self._conflict(project.project_id, err) from err
        except ContentTooLarge as err:
            size = err.data.get("size")
            if err.data.get("what") == "storage" and isinstance(size, int):
                # The usual refusal, with the workspace's figures.
                await self._storage.check_write(project, client, request.path, size, False)
            raise LimitExceeded(str(err)) from err
        except InvalidRequest as err:
            raise InvalidInput(str(err)) from err

    async def delete(self, caller: Caller, request: DeletePath) -> PathRemoval:
        grant, client = await self._open(caller, request.project_id)
        project_id = grant.project_id
        async with self._runtimes.of(project_id).mutation:
            await self._locks.check_write(project_id, caller.agent_id, client, request.path)
            try:
                removed, resolved = await client.remove(
                    request.path, recursive=request.recursive, if_match=request.if_match
                )
            except WriteConflict as err:
                raise await self._conflict(project_id, err) from err
            self._storage.forget(project_id)
            await self._journal.record(project_id, caller.agent_id, FileDeleted(path=resolved))
        return PathRemoval(project_id=project_id, path=resolved, removed=removed)

    async def move(self, caller: Caller, request: MovePath) -> MoveResult:
        grant, client = await self._open(caller, request.project_id)
        project_id = grant.project_id
        async with self._runtimes.of(project_id).mutation:
            await self._locks.check_write(
                project_id, caller.agent_id, client, request.source, request.destination
            )
            moved_from, moved_to = await client.move(
                request.source, request.destination, overwrite=request.overwrite
            )
            await self._journal.record(
                project_id, caller.agent_id, FileMoved(path=moved_to, source=moved_from)
            )
        return MoveResult(project_id=project_id, source=moved_from, destination=moved_to)
