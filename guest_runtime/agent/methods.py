"""The guest protocol's methods and the parameters each takes, shared by host and guest.

The host builds a request as one of these dataclasses and sends ``to_params(request)``; the
agent turns the params back into the same dataclass with ``parse``, which checks every field's
type and refuses unknown ones, so neither side spells a method name or a parameter by hand.
Standard library only, Python 3.8 and newer: it runs inside every VM.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any, Dict, List, Optional, Type, TypeVar, Union

from .errors import InvalidParams

# Method names.
HELLO = "hello"
EXEC_START = "exec.start"
EXEC_STDIN = "exec.stdin"
EXEC_SIGNAL = "exec.signal"
EXEC_WAIT = "exec.wait"
EXEC_LIST = "exec.list"
FS_READ = "fs.read"
FS_WRITE = "fs.write"
FS_EDIT = "fs.edit"
FS_STAT = "fs.stat"
FS_LIST = "fs.list"
FS_MKDIR = "fs.mkdir"
FS_MOVE = "fs.move"
FS_REMOVE = "fs.remove"
FS_SEARCH = "fs.search"
FS_USAGE = "fs.usage"
SYSTEM_STATS = "system.stats"
SYSTEM_SHUTDOWN = "system.shutdown"
TERM_OPEN = "term.open"
TERM_INPUT = "term.input"
TERM_RESIZE = "term.resize"
TERM_CLOSE = "term.close"
TERM_LIST = "term.list"
# Notifications the agent sends.
EXEC_OUTPUT = "exec.output"
EXEC_EXIT = "exec.exit"
TERM_OUTPUT = "term.output"
TERM_EXIT = "term.exit"

T = TypeVar("T")


@dataclasses.dataclass
class Empty:
    """A method without parameters."""


@dataclasses.dataclass
class ExecStart:
    command: Union[str, List[str]]  # a shell command line, or an argv run without a shell
    exec_id: Optional[str] = None
    cwd: Optional[str] = None
    env: Optional[Dict[str, str]] = None
    stdin: Optional[str] = None  # base64, fed then closed (unless stdin_open)
    stdin_open: bool = False
    timeout_s: Optional[float] = None
    output_limit: Optional[int] = None
    tail_limit: Optional[int] = None
    fsize_limit: Optional[int] = None  # RLIMIT_FSIZE for the command's processes
    shell: Optional[str] = None


@dataclasses.dataclass
class ExecStdin:
    exec_id: str
    data: str = ""  # base64
    eof: bool = False


@dataclasses.dataclass
class ExecSignal:
    exec_id: str
    signal: Union[str, int] = "KILL"


@dataclasses.dataclass
class ExecWait:
    exec_id: str
    timeout_s: Optional[float] = None


@dataclasses.dataclass
class FsRead:
    path: str
    offset: int = 0
    length: Optional[int] = None
    line_offset: Optional[int] = None
    line_limit: Optional[int] = None
    max_bytes: Optional[int] = None


@dataclasses.dataclass
class FsWrite:
    path: str
    data: str  # base64
    if_match: Optional[str] = None
    create_parents: bool = True
    append: bool = False
    mode: Optional[int] = None


@dataclasses.dataclass
class TextEdit:
    old_text: str  # exact text to find (must occur once, unless replace_all)
    new_text: str
    replace_all: bool = False


@dataclasses.dataclass
class FsEdit:
    """Exact-text edits applied in the guest, all or none; a diff of the change comes back."""

    path: str
    edits: List[TextEdit]
    if_match: Optional[str] = None
    dry_run: bool = False
    max_diff_bytes: Optional[int] = None  # the diff is cut here, with a marker saying so
    max_file_bytes: Optional[int] = None  # the file before and after may not be larger
    max_growth_bytes: Optional[int] = None  # how much the edit may add (the storage left)


@dataclasses.dataclass
class FsStat:
    path: str
    sha256: bool = False
    follow: bool = True


@dataclasses.dataclass
class FsList:
    path: str = "."
    recursive: bool = False
    max_entries: int = 1000
    include_hidden: bool = True


@dataclasses.dataclass
class FsMkdir:
    path: str
    parents: bool = True


@dataclasses.dataclass
class FsMove:
    source: str
    destination: str
    overwrite: bool = False


@dataclasses.dataclass
class FsRemove:
    path: str
    recursive: bool = False
    missing_ok: bool = False
    if_match: Optional[str] = None


@dataclasses.dataclass
class FsSearch:
    pattern: str = ""
    path: str = "."
    regex: bool = False
    ignore_case: bool = False
    glob: Optional[str] = None
    max_results: int = 200
    timeout_s: Optional[float] = None  # the search process is killed past this (default 30 s)


@dataclasses.dataclass
class FsUsage:
    # A measurement by walking (a workspace that is not a filesystem of its own) this recent
    # is good enough; the agent also walks at most a small share of its time.
    max_age_s: Optional[float] = None
    timeout_s: Optional[float] = None  # stop walking here and report a partial count


@dataclasses.dataclass
class TermOpen:
    # A shell command line, an argv run without a shell, or None: the login shell.
    command: Optional[Union[str, List[str]]] = None
    term_id: Optional[str] = None
    cwd: Optional[str] = None
    env: Optional[Dict[str, str]] = None
    cols: int = 80
    rows: int = 24
    fsize_limit: Optional[int] = None  # RLIMIT_FSIZE for the terminal's processes
    shell: Optional[str] = None


@dataclasses.dataclass
class TermInput:
    term_id: str
    data: str = ""  # base64


@dataclasses.dataclass
class TermResize:
    term_id: str
    cols: int
    rows: int


@dataclasses.dataclass
class TermClose:
    term_id: str
    grace_s: float = 2.0  # after the hang-up, how long before what is left is killed


PARAMS: Dict[str, type] = {
    HELLO: Empty,
    EXEC_START: ExecStart,
    EXEC_STDIN: ExecStdin,
    EXEC_SIGNAL: ExecSignal,
    EXEC_WAIT: ExecWait,
    EXEC_LIST: Empty,
    FS_READ: FsRead,
    FS_WRITE: FsWrite,
    FS_EDIT: FsEdit,
    FS_STAT: FsStat,
    FS_LIST: FsList,
    FS_MKDIR: FsMkdir,
    FS_MOVE: FsMove,
    FS_REMOVE: FsRemove,
    FS_SEARCH: FsSearch,
    FS_USAGE: FsUsage,
    SYSTEM_STATS: Empty,
    SYSTEM_SHUTDOWN: Empty,
    TERM_OPEN: TermOpen,
    TERM_INPUT: TermInput,
    TERM_RESIZE: TermResize,
    TERM_CLOSE: TermClose,
    TERM_LIST: Empty,
}


def to_params(request: Any) -> Dict[str, Any]:
    """A request dataclass as JSON-RPC params (fields left at None are omitted)."""
    return {k: v for k, v in dataclasses.asdict(request).items() if v is not None}


def parse(cls: Type[T], params: Dict[str, Any]) -> T:
    """``params`` as ``cls``, every field's type checked; unknown names are refused."""
    fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise InvalidParams("unknown parameter(s) %s" % ", ".join(repr(n) for n in unknown))
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    values: Dict[str, Any] = {}
    for name, field in fields.items():
        if name not in params or params[name] is None:
            no_default = field.default is dataclasses.MISSING
            if no_default and field.default_factory is dataclasses.MISSING:
                raise InvalidParams("parameter %r is required" % name)
            continue
        values[name] = _check(name, params[name], hints[name])
    return cls(**values)


def _check(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union:
        for option in args:
            if option is type(None):
                continue
            try:
                return _check(name, value, option)
            except InvalidParams:
                continue
        raise InvalidParams("parameter %r has the wrong type" % name)
    if origin in (list, List):
        if not isinstance(value, list):
            raise InvalidParams("parameter %r must be a list" % name)
        return [_check(name, item, args[0]) for item in value]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise InvalidParams("parameter %r must be an object" % name)
        try:
            return parse(hint, value)
        except InvalidParams as err:
            raise InvalidParams("in %r: %s" % (name, err.message)) from None
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise InvalidParams("parameter %r must be an object" % name)
        return {_check(name, k, args[0]): _check(name, v, args[1]) for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise InvalidParams("parameter %r must be of type int" % name)
    if not isinstance(value, hint):
        raise InvalidParams("parameter %r must be of type %s" % (name, hint.__name__))
    return value
