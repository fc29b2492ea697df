"""File operations on a project's workspace, safe for several agents at once.

Reads go straight to the guest. Writes, edits, moves and deletes take the project's mutation
lock, check advisory path locks, and honour ``if_match`` (compare-and-swap in the guest); a
stale ``if_match`` fails with a conflict that names the current sha256 and who changed the file
last. The event recording a change is committed before the next write of the project starts.
"""

from __future__ import annotations

import base64
import binascii
import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from guest_runtime.client import GuestClient
from guest_runtime.errors import WriteConflict
from guest_runtime.protocol import WriteResult
from server.errors import Conflict, InvalidInput, LimitExceeded
from server.models import AccessLevel, Project
from server.results import (
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

if TYPE_CHECKING:
    from server.service import ProjectService

__all__ = ["FileOps", "TextEdit", "apply_edits"]


@dataclass
class TextEdit:
    old_text: str
    new_text: str
    replace_all: bool = False


def apply_edits(text: str, edits: Sequence[TextEdit]) -> tuple[str, int]:
    """Apply exact-text edits in order; each must match once (or everywhere with replace_all)."""
    replacements = 0
    for number, edit in enumerate(edits, 1):
        if not edit.old_text:
            raise InvalidInput(f"edit {number}: old_text is empty; quote the text to replace")
        count = text.count(edit.old_text)
        if count == 0:
            raise InvalidInput(
                f"edit {number}: old_text was not found; read the file again and copy the text "
                "exactly, including whitespace"
            )
        if count > 1 and not edit.replace_all:
            raise InvalidInput(
                f"edit {number}: old_text occurs {count} times; include more surrounding text "
                "to make it unique, or set replace_all"
            )
        text = text.replace(edit.old_text, edit.new_text)
        replacements += count
    return text, replacements


class FileOps:
    def __init__(self, service: ProjectService) -> None:
        self.service = service

    async def _open(
        self, agent_id: str, project_id: str, needed: AccessLevel
    ) -> tuple[Project, GuestClient]:
        project, _ = await self.service.authorize(agent_id, project_id, needed)
        return project, await self.service.lifecycle.client(project)

    async def _conflict(self, project_id: str, err: WriteConflict) -> Conflict:
        path = str(err.data.get("path", ""))
        last = await self.service.store.last_event_for_path(project_id, path)
        who = f"; last changed by {last.agent_id} at {last.created_at.isoformat()}" if last else ""
        return Conflict(
            f"{path} changed since you read it: it now has sha256 "
            f"{err.current_sha256 or 'absent (deleted)'}{who}. Read it again, then retry with "
            "the new sha256 as if_match",
            current_sha256=err.current_sha256,
            changed_by=last.agent_id if last else None,
        )

    # -- reading ------------------------------------------------------------------------------

    async def read(
        self,
        agent_id: str,
        project_id: str,
        path: str,
        *,
        offset: int | None = None,
        limit: int | None = None,
        encoding: Literal["auto", "utf-8", "base64"] = "auto",
    ) -> FileRead:
        _, client = await self._open(agent_id, project_id, AccessLevel.READ_ONLY)
        max_bytes = self.service.limits.max_file_bytes
        if encoding == "base64":
            start = offset or 0
            if start < 0 or (limit is not None and limit < 0):
                raise InvalidInput("offset and limit must not be negative")
            data = await client.read_file(path, offset=start, length=limit, max_bytes=max_bytes)
            return FileRead(
                project_id=project_id,
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
        data = await client.read_file(
            path, line_offset=first_line - 1, line_limit=limit, max_bytes=max_bytes
        )
        used: Literal["utf-8", "base64"]
        try:
            content, used = data.data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            if encoding == "utf-8":
                raise InvalidInput(
                    f"{data.path} is not valid UTF-8; read it with encoding='base64'"
                ) from None
            content, used = base64.b64encode(data.data).decode(), "base64"
        return FileRead(
            project_id=project_id,
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

    async def list(
        self,
        agent_id: str,
        project_id: str,
        path: str = ".",
        *,
        recursive: bool = False,
        include_hidden: bool = True,
        max_entries: int = 1000,
    ) -> FileList:
        _, client = await self._open(agent_id, project_id, AccessLevel.READ_ONLY)
        listing = await client.list_dir(
            path, recursive=recursive, include_hidden=include_hidden, max_entries=max_entries
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
            project_id=project_id, path=listing.path, entries=entries, truncated=listing.truncated
        )

    async def search(
        self,
        agent_id: str,
        project_id: str,
        pattern: str = "",
        *,
        path: str = ".",
        regex: bool = False,
        ignore_case: bool = False,
        glob: str | None = None,
        max_results: int = 200,
    ) -> SearchResults:
        _, client = await self._open(agent_id, project_id, AccessLevel.READ_ONLY)
        found = await client.search(
            pattern,
            path=path,
            regex=regex,
            ignore_case=ignore_case,
            glob=glob,
            max_results=max_results,
        )
        return SearchResults(
            project_id=project_id,
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
        storage = self.service.storage
        await storage.check_write(project, client, path, len(data), append)
        try:
            written = await client.write_file(path, data, if_match=if_match, append=append)
        except WriteConflict as err:
            raise await self._conflict(project.project_id, err) from err
        storage.wrote(project.project_id, written.previous_size, written.size)
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
        limit = self.service.limits.max_file_bytes
        if len(data) > limit:
            raise LimitExceeded(
                f"the content is {len(data)} bytes; one write takes at most {limit} bytes. "
                "Write it in parts with append, or produce it inside the VM with run_command"
            )
        return data

    async def write(
        self,
        agent_id: str,
        project_id: str,
        path: str,
        content: str,
        *,
        encoding: str = "utf-8",
        if_match: str | None = None,
        append: bool = False,
    ) -> FileWrite:
        data = self._decode(content, encoding)
        project, client = await self._open(agent_id, project_id, AccessLevel.READ_WRITE)
        async with self.service.runtime_of(project_id).mutation:
            await self.service.locks.check_write(agent_id, project_id, path)
            written = await self._put(project, client, path, data, if_match, append)
            await self.service.store.append_event(
                project_id,
                agent_id,
                "file.written",
                {"path": written.path, "sha256": written.sha256, "size": written.size},
            )
        return FileWrite(
            project_id=project_id,
            path=written.path,
            sha256=written.sha256,
            size=written.size,
            created=written.created,
        )

    async def edit(
        self,
        agent_id: str,
        project_id: str,
        path: str,
        edits: Sequence[TextEdit],
        *,
        if_match: str | None = None,
        dry_run: bool = False,
    ) -> EditResult:
        if not edits:
            raise InvalidInput("edits is empty; give at least one {old_text, new_text}")
        project, client = await self._open(agent_id, project_id, AccessLevel.READ_WRITE)
        async with self.service.runtime_of(project_id).mutation:
            if not dry_run:
                await self.service.locks.check_write(agent_id, project_id, path)
            limit = self.service.limits.max_file_bytes
            current = await client.read_file(path, max_bytes=limit)
            if not current.eof:
                raise LimitExceeded(f"{current.path} is larger than {limit} bytes")
            if if_match is not None and if_match != current.sha256:
                raise await self._conflict(
                    project_id,
                    WriteConflict(
                        "stale if_match", {"path": current.path, "current_sha256": current.sha256}
                    ),
                )
            try:
                before = current.data.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"{current.path} is not UTF-8 text; edit_file edits text"
                ) from None
            after, replacements = apply_edits(before, edits)
            diff = "".join(
                difflib.unified_diff(
                    before.splitlines(keepends=True),
                    after.splitlines(keepends=True),
                    fromfile=f"a/{current.path}",
                    tofile=f"b/{current.path}",
                )
            )
            if dry_run:
                return EditResult(
                    project_id=project_id,
                    path=current.path,
                    sha256=current.sha256,
                    replacements=replacements,
                    diff=diff,
                    applied=False,
                )
            written = await self._put(
                project, client, current.path, after.encode("utf-8"), current.sha256, False
            )
            await self.service.store.append_event(
                project_id,
                agent_id,
                "file.edited",
                {"path": written.path, "sha256": written.sha256, "replacements": replacements},
            )
        return EditResult(
            project_id=project_id,
            path=written.path,
            sha256=written.sha256,
            replacements=replacements,
            diff=diff,
            applied=True,
        )

    async def delete(
        self,
        agent_id: str,
        project_id: str,
        path: str,
        *,
        recursive: bool = False,
        if_match: str | None = None,
    ) -> PathRemoval:
        _, client = await self._open(agent_id, project_id, AccessLevel.READ_WRITE)
        async with self.service.runtime_of(project_id).mutation:
            await self.service.locks.check_write(agent_id, project_id, path)
            try:
                removed, resolved = await client.remove(
                    path, recursive=recursive, if_match=if_match
                )
            except WriteConflict as err:
                raise await self._conflict(project_id, err) from err
            self.service.storage.forget(project_id)
            await self.service.store.append_event(
                project_id, agent_id, "file.deleted", {"path": resolved}
            )
        return PathRemoval(project_id=project_id, path=resolved, removed=removed)

    async def move(
        self,
        agent_id: str,
        project_id: str,
        source: str,
        destination: str,
        *,
        overwrite: bool = False,
    ) -> MoveResult:
        _, client = await self._open(agent_id, project_id, AccessLevel.READ_WRITE)
        async with self.service.runtime_of(project_id).mutation:
            await self.service.locks.check_write(agent_id, project_id, source, destination)
            moved_from, moved_to = await client.move(source, destination, overwrite=overwrite)
            await self.service.store.append_event(
                project_id, agent_id, "file.moved", {"path": moved_to, "source": moved_from}
            )
        return MoveResult(project_id=project_id, source=moved_from, destination=moved_to)
