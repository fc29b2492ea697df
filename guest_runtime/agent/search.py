"""``fs.search`` in a child process with a deadline, so no pattern can freeze the agent.

Python's ``re`` holds the interpreter while it matches, and some patterns (``^(a+)+$`` against
a long line of ``a`` that does not match) backtrack for longer than anyone will wait. So each
search runs in a worker: this same agent started again with ``--search-worker`` (the request
on its stdin, the answer on its stdout), killed when its deadline passes, while the agent keeps
serving everything else. The worker has the agent's identity (commands cannot trace or signal
it) and is not dumpable either.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import stat
import sys
from typing import Any, Dict, Iterator, List, Tuple

from . import methods
from .errors import GuestError, InvalidParams
from .files import CHUNK, FILE_READ_FLAGS, open_dir, os_error
from .methods import FsSearch, parse
from .paths import Workspace, not_found
from .walk import Walk

DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 300.0
# Searches running at once; more wait their turn (each is a process in the VM).
MAX_WORKERS = 4
SKIP_DIRS = {".git", ".hg", ".svn"}
MAX_FILE = 8 * 1024 * 1024
MAX_LINE_TEXT = 500
WORKER_FLAG = "--search-worker"


def agent_command() -> List[str]:
    """How to start this agent again: its zip application, or its package."""
    program = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.isfile(program) and not program.endswith(".py"):
        return [sys.executable, program]
    return [sys.executable, "-m", __package__ or "projectvm_agent"]


# -- the work, done in the worker ---------------------------------------------------------------


def _matching_lines(fd: int, size: int, matcher: "re.Pattern[str]") -> Iterator[Tuple[int, str]]:
    if size > MAX_FILE:
        return
    chunks = []
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            break
        chunks.append(chunk)
    data = b"".join(chunks)
    if b"\x00" in data[:8192]:
        return  # binary
    text = data.decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        if matcher.search(line):
            yield number, line[:MAX_LINE_TEXT]


def _open_file(name: str, dir_fd: int) -> int:
    """A regular file under ``dir_fd`` opened for reading, or -1 (gone, swapped, not a file)."""
    try:
        fd = os.open(name, FILE_READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return -1
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return -1
    os.set_blocking(fd, True)
    return fd


def search(workspace: Workspace, request: FsSearch) -> Dict[str, Any]:
    pattern, glob = request.pattern, request.glob
    max_results = max(1, min(request.max_results, 5000))
    if not pattern and not glob:
        raise InvalidParams("give a pattern to search file contents, or a glob to match names")
    flags = re.IGNORECASE if request.ignore_case else 0
    try:
        matcher = re.compile(pattern if request.regex else re.escape(pattern), flags)
    except re.error as err:
        raise InvalidParams("invalid regular expression: %s" % err) from None
    matches: List[Dict[str, Any]] = []
    scanned = 0
    truncated = False
    with workspace.resolve(request.path) as res:
        if res.lstat() is None:
            raise not_found(res.path)
        walk = Walk(open_dir(res), res.parts, skip_dirs=SKIP_DIRS)
    with walk:
        for entry in walk:
            if not stat.S_ISREG(entry.st.st_mode):
                continue
            path = entry.path
            if glob and not (fnmatch.fnmatch(entry.name, glob) or fnmatch.fnmatch(path, glob)):
                continue
            if not pattern:
                matches.append({"path": path})
            else:
                fd = _open_file(entry.name, entry.dir_fd)
                if fd < 0:
                    continue
                try:
                    scanned += 1
                    for number, text in _matching_lines(fd, entry.st.st_size, matcher):
                        matches.append({"path": path, "line": number, "text": text})
                        if len(matches) >= max_results:
                            break
                finally:
                    os.close(fd)
            if len(matches) >= max_results:
                truncated = True
                break
    return {"matches": matches, "files_scanned": scanned, "truncated": truncated}


def run_worker(root: str) -> int:
    """The worker's whole life: one request on stdin, one answer on stdout."""
    answer: Dict[str, Any]
    try:
        params = json.loads(sys.stdin.buffer.read())
        answer = {"result": search(Workspace(root), parse(FsSearch, params))}
    except GuestError as err:
        answer = {"error": err.to_json()}
    except OSError as err:
        answer = {"error": os_error(err, None).to_json()}
    sys.stdout.write(json.dumps(answer, ensure_ascii=False))
    sys.stdout.flush()
    return 0


# -- the agent's side ---------------------------------------------------------------------------


class Searches:
    """Handler of ``fs.search``: one worker per search, at most ``MAX_WORKERS`` at once."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._slots = asyncio.Semaphore(MAX_WORKERS)

    def handlers(self) -> Dict[str, Any]:
        return {methods.FS_SEARCH: self.search}

    async def search(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(FsSearch, params)  # refused here, before a process is started
        timeout = DEFAULT_TIMEOUT_S if request.timeout_s is None else request.timeout_s
        if not 0 < timeout <= MAX_TIMEOUT_S:
            raise InvalidParams("timeout_s must be between 0 and %g seconds" % MAX_TIMEOUT_S)
        async with self._slots:
            answer = await self._run_worker(params, timeout)
        if "error" in answer:
            error = answer["error"]
            data = dict(error.get("data") or {})
            kind = str(data.pop("kind", "internal"))
            raise GuestError(kind, str(error.get("message")), **data)
        result = answer.get("result")
        if not isinstance(result, dict):
            raise GuestError("internal", "the search worker gave no result; try again")
        return result

    async def _run_worker(self, params: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        try:
            worker = await asyncio.create_subprocess_exec(
                *agent_command(),
                WORKER_FLAG,
                "--root",
                self.workspace.root,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except BlockingIOError:
            raise GuestError(
                "resource_exhausted",
                "cannot start a search: the VM has reached its process limit; end some "
                "processes and retry",
            ) from None
        try:
            out, err = await asyncio.wait_for(
                worker.communicate(json.dumps(params).encode()), timeout
            )
        except asyncio.TimeoutError:
            raise GuestError(
                "timeout",
                "the search did not finish within %gs and was stopped (a regular expression "
                "that backtracks without end, or a very large tree); simplify the pattern, or "
                "narrow it with path or glob" % timeout,
            ) from None
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        try:
            answer = json.loads(out)
        except ValueError:
            detail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise GuestError(
                "internal",
                "the search worker failed (%s); try again" % detail[0],
            ) from None
        return answer if isinstance(answer, dict) else {}
