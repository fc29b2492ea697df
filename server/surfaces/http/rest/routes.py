"""The REST routes: every operation of the core at a resource-oriented URL, from one table.

Each :class:`Route` names its operation, its method and path under ``/api/v1``, where the
request model's fields come from (path, query, a JSON body, one field as the whole body, or a
raw byte stream), and its :class:`Style`: how the answer is shaped (201 + ``Location``, 204 for
an idempotent DELETE, raw bytes with an ``ETag``, ``Link`` paging, ...). ``PRIMARY`` has one
route per operation; a test fails if an operation has none.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Literal

from server.domain.operations import Operation

__all__ = ["API_PREFIX", "PRIMARY", "ROUTES", "Body", "Method", "Route", "Style"]

API_PREFIX = "/api/v1"

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class Body(enum.Enum):
    NONE = "none"  # every field from the path and the query string
    JSON = "json"  # a JSON object of fields (the query string may add more)
    FIELD = "field"  # the whole JSON body is one field (``Route.body_field``)
    RAW = "raw"  # the body is the file's bytes, streamed


class Style(enum.Enum):
    PLAIN = "plain"  # 200 with the result as JSON
    CREATED = "created"  # 201 + Location of the new resource
    REMOVED = "removed"  # 204, also when it was already gone (idempotent)
    EXECUTION = "execution"  # 201 when the command ended, 202 while it runs; Location
    OUTPUT = "output"  # JSON, or NDJSON chunks until the end (Accept: application/x-ndjson)
    HISTORY = "history"  # cursor paging: Link rel="next" and next_cursor
    EVENTS = "events"  # Link rel="next" with since_id
    FILE_READ = "file_read"  # raw bytes + ETag, If-None-Match -> 304; JSON on request
    FILE_WRITE = "file_write"  # raw upload, If-Match / If-None-Match: *; 201 when created


@dataclass(frozen=True)
class Route:
    operation: Operation
    method: Method
    path: str  # under API_PREFIX, in Starlette's syntax
    style: Style = Style.PLAIN
    body: Body = Body.NONE
    body_field: str | None = None

    @property
    def url(self) -> str:
        return API_PREFIX + self.path

    @property
    def path_fields(self) -> list[str]:
        """The request fields the path carries, in order."""
        return re.findall(r"\{([A-Za-z_]\w*)(?::\w+)?\}", self.path)


_O = Operation
_P = "/projects/{project_id}"
_E = "/executions/{execution_id}"
_T = "/terminals/{execution_id}"
_FILE = _P + "/files/{path:path}"
_LOCK = _P + "/locks/{path:path}"
_S = "settings"

ROUTES: tuple[Route, ...] = (
    # projects
    Route(_O.CREATE_PROJECT, "POST", "/projects", Style.CREATED, Body.JSON),
    Route(_O.LIST_PROJECTS, "GET", "/projects"),
    Route(_O.GET_PROJECT, "GET", _P),
    Route(_O.DELETE_PROJECT, "DELETE", _P, Style.REMOVED),
    Route(_O.START_PROJECT, "POST", _P + "/start"),
    Route(_O.STOP_PROJECT, "POST", _P + "/stop"),
    Route(_O.UPDATE_PROJECT_SETTINGS, "PATCH", _P + "/settings", body=Body.FIELD, body_field=_S),
    # commands
    Route(_O.RUN_COMMAND, "POST", _P + "/executions", Style.EXECUTION, Body.JSON),
    Route(_O.LIST_EXECUTIONS, "GET", _P + "/executions"),
    Route(_O.GET_EXECUTION_HISTORY, "GET", _P + "/history", Style.HISTORY),
    Route(_O.READ_COMMAND_OUTPUT, "GET", _E + "/output", Style.OUTPUT),
    Route(_O.READ_COMMAND_OUTPUT, "GET", _E),
    Route(_O.SEND_INPUT, "POST", _E + "/input", body=Body.JSON),
    Route(_O.CANCEL_EXECUTION, "POST", _E + "/cancel"),
    # terminals (their output also streams over the project WebSocket)
    Route(_O.OPEN_TERMINAL, "POST", _P + "/terminals", Style.CREATED, Body.JSON),
    Route(_O.LIST_TERMINALS, "GET", _P + "/terminals"),
    Route(_O.TERMINAL_READ, "GET", _T),
    Route(_O.TERMINAL_WRITE, "POST", _T + "/input", body=Body.JSON),
    Route(_O.RESIZE_TERMINAL, "PUT", _T + "/size", body=Body.JSON),
    Route(_O.CLOSE_TERMINAL, "DELETE", _T, Style.REMOVED),
    # files
    Route(_O.MOVE_PATH, "POST", _P + "/files:move", body=Body.JSON),
    Route(_O.READ_FILE, "GET", _FILE, Style.FILE_READ),
    Route(_O.WRITE_FILE, "PUT", _FILE, Style.FILE_WRITE, Body.RAW),
    Route(_O.EDIT_FILE, "PATCH", _FILE, body=Body.JSON),
    Route(_O.DELETE_PATH, "DELETE", _FILE, Style.REMOVED),
    Route(_O.LIST_FILES, "GET", _P + "/tree"),
    Route(_O.SEARCH_FILES, "GET", _P + "/search"),
    # members
    Route(_O.WHOAMI, "GET", "/me"),
    Route(_O.LIST_MEMBERS, "GET", _P + "/members"),
    Route(_O.ASSIGN_AGENT, "PUT", _P + "/members/{agent_id}", body=Body.JSON),
    Route(_O.REMOVE_AGENT, "DELETE", _P + "/members/{agent_id}", Style.REMOVED),
    # locks and events
    Route(_O.LIST_LOCKS, "GET", _P + "/locks"),
    Route(_O.LOCK_PATH, "PUT", _LOCK, body=Body.JSON),
    Route(_O.UNLOCK_PATH, "DELETE", _LOCK, Style.REMOVED),
    Route(_O.GET_EVENTS, "GET", _P + "/events", Style.EVENTS),
)

# The first route of each operation is the one the docs and Location headers point at.
PRIMARY: dict[Operation, Route] = {}
for _route in ROUTES:
    PRIMARY.setdefault(_route.operation, _route)
