"""The messages of the project WebSocket (subprotocol ``projectvm.v1``), typed.

Every message is a JSON object with a ``stream`` (what it is about: ``events``, ``execution``,
``terminal``) and a ``type`` (what it says). A client message may carry an ``id``; the answer
to it (``ack`` or ``error``) repeats it. Several streams share one socket.

Client to server::

    {"stream": "events", "type": "subscribe", "since_id": 0}
    {"stream": "events", "type": "unsubscribe"}
    {"stream": "execution", "type": "subscribe", "execution_id": "exe_..", "since": 0}
    {"stream": "execution", "type": "unsubscribe", "execution_id": "exe_.."}
    {"stream": "execution", "type": "run", "command": "make test", "keep_stdin_open": false}
    {"stream": "execution", "type": "stdin", "execution_id": "exe_..", "data": "y\\n"}
    {"stream": "execution", "type": "cancel", "execution_id": "exe_.."}
    {"stream": "terminal", "type": "open", "command": null, "cols": 80, "rows": 24,
     "encoding": "base64"}
    {"stream": "terminal", "type": "attach", "execution_id": "exe_..", "since": 0}
    {"stream": "terminal", "type": "input", "execution_id": "exe_..", "data": "ls\r"}
    {"stream": "terminal", "type": "resize", "execution_id": "exe_..", "cols": 120, "rows": 40}
    {"stream": "terminal", "type": "close", "execution_id": "exe_.."}
    {"stream": "terminal", "type": "detach", "execution_id": "exe_.."}
    {"stream": "session", "type": "ping"}

Server to client::

    {"stream": "session", "type": "hello", "agent_id": .., "project_id": .., "streams": [..]}
    {"stream": "events", "type": "event", "event": {"event_id": 41, "kind": .., ...}}
    {"stream": "execution", "type": "output", "execution_id": .., "stdout": .., "stderr": ..,
     "next_since": 7}
    {"stream": "execution", "type": "exit", "execution_id": .., "status": .., "exit_code": 0}
    {"stream": "terminal", "type": "output", "execution_id": .., "data": "<base64>",
     "encoding": "base64", "since": 0, "next_since": 42, "skipped": 0}
    {"stream": "terminal", "type": "resize", "execution_id": .., "cols": 120, "rows": 40}
    {"stream": "terminal", "type": "exit", "execution_id": .., "status": "completed",
     "exit_code": 0, "reason": null, "next_since": 42}
    {"stream": .., "type": "ack", "id": .., "result": {..}}
    {"stream": .., "type": "error", "id": .., "problem": {RFC 9457 problem details}}
"""

from __future__ import annotations

from html import escape
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "PROTOCOL",
    "ClientMessage",
    "EventsSubscribe",
    "ExecutionCancel",
    "ExecutionRun",
    "ExecutionStdin",
    "ExecutionSubscribe",
    "Ping",
    "StreamUnsubscribe",
    "TerminalAttach",
    "TerminalClose",
    "TerminalDetach",
    "TerminalInput",
    "TerminalOpen",
    "TerminalResize",
    "protocol_summary",
]

PROTOCOL = "projectvm.v1"


class ClientMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: str
    type: str
    id: Annotated[
        str | int | None, Field(description="echoed in the ack or error that answers it")
    ] = None


class Ping(ClientMessage):
    """Answered with a pong: a round trip through the server."""

    stream: Literal["session"] = "session"
    type: Literal["ping"]


class EventsSubscribe(ClientMessage):
    """Receive the project's events after ``since_id``: the stored ones first, then each new
    one as it happens, every one exactly once and in order. Reconnect with the last
    ``event_id`` you saw to resume without a gap."""

    stream: Literal["events"]
    type: Literal["subscribe"]
    since_id: Annotated[int, Field(ge=0)] = 0


class StreamUnsubscribe(ClientMessage):
    """Stop receiving a stream (for ``execution``, the one ``execution_id`` names)."""

    type: Literal["unsubscribe"]
    execution_id: str | None = None


class ExecutionSubscribe(ClientMessage):
    """Receive an execution's output after cursor ``since`` as it comes, then its exit."""

    stream: Literal["execution"]
    type: Literal["subscribe"]
    execution_id: str
    since: Annotated[int, Field(ge=0)] = 0


class ExecutionRun(ClientMessage):
    """Run a command (run_command without waiting); its output follows on this socket."""

    stream: Literal["execution"]
    type: Literal["run"]
    command: str
    cwd: str | None = None
    env: dict[str, str] | None = None
    timeout_s: float | None = None
    keep_stdin_open: bool = False


class ExecutionStdin(ClientMessage):
    """Write to a running command's stdin (send_input)."""

    stream: Literal["execution"]
    type: Literal["stdin"]
    execution_id: str
    data: str
    eof: bool = False


class ExecutionCancel(ClientMessage):
    """Cancel a queued or running command (cancel_execution)."""

    stream: Literal["execution"]
    type: Literal["cancel"]
    execution_id: str


OutputEncoding = Annotated[
    Literal["base64", "utf-8"],
    Field(
        description="how output messages carry the terminal's bytes: 'base64' (exact; for "
        "xterm.js write a Uint8Array) or 'utf-8' text (a character cut between two messages "
        "comes whole in the second)"
    ),
]


class TerminalOpen(ClientMessage):
    """Open a terminal (open_terminal); the ack carries it (its ``execution_id``), then its
    output follows on this socket."""

    stream: Literal["terminal"]
    type: Literal["open"]
    command: str | None = None
    cols: int = 80
    rows: int = 24
    cwd: str | None = None
    env: dict[str, str] | None = None
    idle_timeout_s: float | None = None
    encoding: OutputEncoding = "base64"


class TerminalAttach(ClientMessage):
    """Follow a terminal's output after byte cursor ``since`` (0: all that is kept, the last
    256 KiB at least), then its exit. Any member may watch; the ack carries its size."""

    stream: Literal["terminal"]
    type: Literal["attach"]
    execution_id: str
    since: Annotated[int, Field(ge=0)] = 0
    encoding: OutputEncoding = "base64"


class TerminalInput(ClientMessage):
    """Type into a terminal (terminal_write): ``data`` exactly as a terminal sends it (Enter
    is a carriage return). Answered only when it fails, or with an ack when it has an ``id``."""

    stream: Literal["terminal"]
    type: Literal["input"]
    execution_id: str
    data: str
    encoding: Annotated[Literal["utf-8", "base64"], Field(description="how data is encoded")] = (
        "utf-8"
    )


class TerminalResize(ClientMessage):
    """Change a terminal's size (resize_terminal); every watcher gets a ``resize``."""

    stream: Literal["terminal"]
    type: Literal["resize"]
    execution_id: str
    cols: int
    rows: int


class TerminalClose(ClientMessage):
    """Close a terminal (close_terminal); the ack carries how it ended, after its ``exit``."""

    stream: Literal["terminal"]
    type: Literal["close"]
    execution_id: str


class TerminalDetach(ClientMessage):
    """Stop following a terminal; it stays open."""

    stream: Literal["terminal"]
    type: Literal["detach"]
    execution_id: str


def protocol_summary() -> str:
    """The protocol, as HTML for the API docs page."""
    messages: list[type[ClientMessage]] = [
        EventsSubscribe,
        ExecutionSubscribe,
        ExecutionRun,
        ExecutionStdin,
        ExecutionCancel,
        TerminalOpen,
        TerminalAttach,
        TerminalInput,
        TerminalResize,
        TerminalClose,
        TerminalDetach,
        StreamUnsubscribe,
        Ping,
    ]
    rows = []
    for model in messages:
        fields = model.model_fields
        field = fields["stream"]
        named = getattr(field.annotation, "__args__", ())
        stream = " | ".join(named) if field.is_required() else field.default
        stream = stream or "events | execution"
        kind = fields["type"].annotation
        kind_name = getattr(kind, "__args__", ("",))[0]
        extra = ", ".join(name for name in fields if name not in ("stream", "type", "id"))
        rows.append(
            f"<tr><td><code>{escape(str(stream))}</code></td><td><code>{escape(kind_name)}"
            f"</code></td><td>{escape(extra)}</td><td>{escape(model.__doc__ or '')}</td></tr>"
        )
    return (
        "<p>Connect to <code>/api/v1/projects/{project_id}/ws</code> offering the "
        f"subprotocols <code>{PROTOCOL}</code> and <code>bearer.&lt;token&gt;</code> (or "
        "<code>ticket.&lt;ticket&gt;</code> from <code>POST /api/v1/ws-tickets</code>, "
        "single-use, valid 30 s): the token never goes in a URL. The server echoes only "
        f"<code>{PROTOCOL}</code>. A page of another site is refused (its Origin). Every "
        "message is JSON with a <code>stream</code> and a <code>type</code>; access is "
        "checked for each, and a member removed while connected is disconnected (close code "
        "4403) with the reason.</p><table><tr><th>stream</th><th>type</th><th>fields</th>"
        f"<th></th></tr>{''.join(rows)}</table><p>The server sends <code>hello</code> first, "
        "then <code>event</code>, <code>output</code>, <code>exit</code>, <code>ack</code>, "
        "<code>error</code> (with an RFC 9457 problem) and <code>pong</code> messages; "
        "for a terminal, <code>output</code> (<code>data</code> in the stated "
        "<code>encoding</code>, with the byte cursors <code>since</code> and "
        "<code>next_since</code>: attach again with <code>since</code> = the last "
        "<code>next_since</code> to resume without a repeat), <code>resize</code> and "
        "<code>exit</code>.</p>"
    )


def server_message(stream: str, type_: str, **fields: Any) -> dict[str, Any]:
    return {"stream": stream, "type": type_, **fields}
