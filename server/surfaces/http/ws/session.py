"""One open project WebSocket: its subscriptions, its writer, and the guard on its access.

Every client message is served by an operation of the core as the connected agent, on the
``websocket`` surface, so each is checked by the policy when it arrives. Subscriptions are
long-polls of those operations (``get_events``, ``read_command_output``): each round re-admits
the agent, replays what the store has after the cursor, then waits on the hub for more. A
guard re-checks membership at every change of the project; an agent removed while connected
gets nothing more and the socket is closed with the reason (code 4403).

Streams are a table (:data:`STREAMS`): ``session``, ``events``, ``execution`` and ``terminal``,
each with its own messages. A terminal's output is followed the same way, by long-polls of
``terminal_read`` from a byte cursor, so a watcher who loses access stops receiving at once.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import anyio.abc
from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from guest_runtime.errors import ProjectVMError
from server.core.caller import Caller
from server.core.requests import (
    CancelExecution,
    CloseTerminal,
    GetEvents,
    OpenTerminal,
    ReadCommandOutput,
    ResizeTerminal,
    RunCommand,
    SendInput,
    TerminalRead,
    TerminalWrite,
)
from server.core.requests import Request as OperationRequest
from server.core.results import (
    CommandOutput,
    CommandResult,
    EventsResult,
    TerminalInfo,
    TerminalView,
)
from server.core.service import ProjectService
from server.domain.errors import AccessDenied, NotFound, Unauthenticated
from server.domain.invalid import describe
from server.domain.operations import Operation
from server.surfaces.http.auth import StillValid
from server.surfaces.http.connections import abort_connection
from server.surfaces.http.problems import Problem, problem_of
from server.surfaces.http.ws.messages import (
    ClientMessage,
    EventsSubscribe,
    ExecutionCancel,
    ExecutionRun,
    ExecutionStdin,
    ExecutionSubscribe,
    Ping,
    StreamUnsubscribe,
    TerminalAttach,
    TerminalClose,
    TerminalDetach,
    TerminalInput,
    TerminalOpen,
    TerminalResize,
    server_message,
)
from server.surfaces.http.ws.outbox import Outbox

__all__ = ["CLOSE_CREDENTIAL_GONE", "CLOSE_REMOVED", "STREAMS", "Session", "StreamKind"]

log = logging.getLogger("projectvm.ws")

CLOSE_REMOVED = 4403
CLOSE_CREDENTIAL_GONE = 4401
# How often an idle socket asks again whether its credential still stands (a message always
# asks first).
CREDENTIAL_RECHECK_S = 30.0
# One round of a subscription's long-poll; then it re-admits and waits again.
POLL_WAIT_S = 25.0
EVENTS_PER_ROUND = 500
# What may wait to be sent, in characters of JSON (one larger message still goes, alone).
OUTBOX_CHARS = 4 * 1024 * 1024
# A client that reads nothing for this long while messages wait is disconnected: it would
# otherwise hold what waits for as long as it keeps the socket open.
SEND_STALL_S = 15.0
# Streams one socket may follow at once.
MAX_SUBSCRIPTIONS = 64


class StreamKind(Protocol):
    """What a stream does with the client messages addressed to it."""

    async def handle(self, session: Session, message: dict[str, Any]) -> None: ...


class Session:
    def __init__(
        self, websocket: WebSocket, service: ProjectService, agent_id: str, project_id: str
    ) -> None:
        self.websocket = websocket
        self.service = service
        self.agent_id = agent_id
        self.project_id = project_id
        self._outbox = Outbox(OUTBOX_CHARS)
        self._subscriptions: dict[tuple[str, str], anyio.CancelScope] = {}
        self._group: anyio.abc.TaskGroup | None = None
        # Held while a message is written; once closing, nothing more is.
        self._writing = anyio.Lock()
        self._closing = False
        # Whether the credential the socket was opened with still stands (None: not asked).
        self.still_valid: StillValid | None = None

    # -- what streams use ---------------------------------------------------------------------

    def caller(self, operation: Operation) -> Caller:
        return Caller(self.agent_id, "websocket", operation)

    async def call(self, operation: Operation, request: OperationRequest) -> BaseModel:
        return await self.service.call(self.caller(operation), request)

    async def send(self, message: dict[str, Any]) -> None:
        await self._outbox.put(json.dumps(message, ensure_ascii=False))

    async def reply(self, message: ClientMessage, result: BaseModel | None = None) -> None:
        fields: dict[str, Any] = {"id": message.id}
        if result is not None:
            fields["result"] = result.model_dump(mode="json")
        await self.send(server_message(message.stream, "ack", **fields))

    async def refuse(
        self, stream: str, problem: Problem, message_id: str | int | None = None
    ) -> None:
        body = problem.body()
        await self.send(server_message(stream, "error", id=message_id, problem=body))

    def check_room(self, stream: str, key: str) -> None:
        """Refuse a subscription past :data:`MAX_SUBSCRIPTIONS` (replacing one is fine)."""
        if (stream, key) not in self._subscriptions and len(
            self._subscriptions
        ) >= MAX_SUBSCRIPTIONS:
            raise _bad(
                f"this socket already follows {MAX_SUBSCRIPTIONS} streams, the most one may; "
                "unsubscribe from one (or open another socket) first"
            )

    def subscribe(self, stream: str, key: str, follow: Callable[[], Awaitable[None]]) -> None:
        """Start following ``(stream, key)``, replacing an earlier subscription to it."""
        self.unsubscribe(stream, key)
        scope = anyio.CancelScope()
        self._subscriptions[(stream, key)] = scope

        async def run() -> None:
            with scope:
                try:
                    await follow()
                except ProjectVMError as err:
                    await self.refuse(stream, problem_of(err))
            if self._subscriptions.get((stream, key)) is scope:
                del self._subscriptions[(stream, key)]

        assert self._group is not None
        self._group.start_soon(run)

    def unsubscribe(self, stream: str, key: str) -> bool:
        scope = self._subscriptions.pop((stream, key), None)
        if scope is not None:
            scope.cancel()
        return scope is not None

    # -- the connection -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until the client leaves or loses access."""
        async with anyio.create_task_group() as group:
            self._group = group
            group.start_soon(self._write)
            group.start_soon(self._guard)
            await self.send(
                server_message(
                    "session",
                    "hello",
                    agent_id=self.agent_id,
                    project_id=self.project_id,
                    streams=sorted(STREAMS),
                )
            )
            try:
                await self._read()
            finally:
                group.cancel_scope.cancel()

    async def _write(self) -> None:
        try:
            while True:
                text = await self._outbox.get()
                async with self._writing:
                    if self._closing:
                        return
                    with anyio.move_on_after(SEND_STALL_S) as stalled:
                        await self.websocket.send_text(text)
                if stalled.cancelled_caught:  # the client reads nothing: let it go
                    log.info(
                        "closing %s's socket to %s: it read nothing for %g s",
                        self.agent_id,
                        self.project_id,
                        SEND_STALL_S,
                    )
                    abort_connection(self.websocket.scope)
                    break
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client is gone
        assert self._group is not None
        self._group.cancel_scope.cancel()

    async def _read(self) -> None:
        while True:
            try:
                text = await self.websocket.receive_text()
            except (WebSocketDisconnect, KeyError, RuntimeError):
                return  # gone (a binary frame is not our protocol either)
            await self._dispatch(text)

    async def _credential_stands(self) -> bool:
        """False (and the socket closing, saying why) once its credential is replaced or
        revoked: a leaked token, replaced, must not live on in an open socket."""
        if self.still_valid is None or await self.still_valid():
            return True
        gone = Unauthenticated(
            f"the credential this socket was opened with no longer stands for {self.agent_id} "
            "(its token was replaced or the agent removed); connect again with a current token"
        )
        await self._close(CLOSE_CREDENTIAL_GONE, gone, "the credential no longer stands")
        return False

    async def _dispatch(self, text: str) -> None:
        if not await self._credential_stands():
            return
        try:
            message = json.loads(text)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):  # RecursionError: nested too deeply to read
            await self.refuse("session", _bad("a message must be a flat JSON object"))
            return
        stream = message.get("stream")
        kind = STREAMS.get(stream) if isinstance(stream, str) else None
        message_id = message.get("id") if isinstance(message.get("id"), str | int) else None
        if kind is None:
            known = ", ".join(sorted(STREAMS))
            problem = _bad(f"unknown stream {stream!r}; the streams are {known}")
            await self.refuse("session", problem, message_id)
            return
        try:
            await kind.handle(self, message)
        except ValidationError as err:
            listed = describe(err, whole="message")
            problem = _bad(f"invalid {stream} message: {listed}; see /api/v1/docs#websocket")
            await self.refuse(str(stream), problem, message_id)
        except ProjectVMError as err:
            await self.refuse(str(stream), problem_of(err), message_id)
        except Problem as problem:  # a message the stream does not take
            await self.refuse(str(stream), problem, message_id)

    async def _guard(self) -> None:
        """Close the socket as soon as the agent may no longer read the project."""
        gate, hub = self.service.gate, self.service.hub
        while True:
            changed = hub.changed(self.project_id)
            if not await self._credential_stands():
                return
            try:
                await gate.admit(self.caller(Operation.GET_EVENTS), self.project_id)
            except (NotFound, AccessDenied) as err:
                await self._close(CLOSE_REMOVED, err)
                return
            with anyio.move_on_after(CREDENTIAL_RECHECK_S):
                await changed.wait()

    async def _close(self, code: int, err: ProjectVMError, reason: str | None = None) -> None:
        """Stop every stream, say why (in full, then as the close frame's short reason), and
        close; nothing queued before is sent any more."""
        for stream, key in list(self._subscriptions):
            self.unsubscribe(stream, key)
        fatal = server_message("session", "error", problem=problem_of(err).body(), fatal=True)
        reason = reason or f"no access to project {self.project_id} any more"
        async with self._writing:
            self._closing = True
            with anyio.move_on_after(5), contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await self.websocket.send_text(json.dumps(fatal))
                await self.websocket.close(code, reason)
        assert self._group is not None
        self._group.cancel_scope.cancel()


def _bad(detail: str) -> Problem:
    return Problem(400, "invalid-message", "Invalid message", detail)


# -- the streams ------------------------------------------------------------------------------


class SessionStream:
    """``ping`` -> ``pong``."""

    async def handle(self, session: Session, message: dict[str, Any]) -> None:
        ping = Ping.model_validate(message)
        await session.send(server_message("session", "pong", id=ping.id))


class EventsStream:
    async def handle(self, session: Session, message: dict[str, Any]) -> None:
        if message.get("type") == "unsubscribe":
            request = StreamUnsubscribe.model_validate(message)
            session.unsubscribe("events", "")
            await session.reply(request)
            return
        subscribe = EventsSubscribe.model_validate(message)
        session.check_room("events", "")
        # The first round is made here, so a refusal answers this message.
        first = await self._round(session, subscribe.since_id, wait_s=0)

        async def follow() -> None:
            since = await self._deliver(session, first)
            while True:
                result = await self._round(session, since, POLL_WAIT_S)
                since = await self._deliver(session, result)

        await session.reply(subscribe)
        session.subscribe("events", "", follow)

    @staticmethod
    async def _round(session: Session, since_id: int, wait_s: float) -> EventsResult:
        request = GetEvents(
            project_id=session.project_id,
            since_id=since_id,
            wait_s=wait_s,
            limit=EVENTS_PER_ROUND,
        )
        result = await session.call(Operation.GET_EVENTS, request)
        assert isinstance(result, EventsResult)
        return result

    @staticmethod
    async def _deliver(session: Session, result: EventsResult) -> int:
        for event in result.events:
            fields = {"event": event.model_dump(mode="json")}
            await session.send(server_message("events", "event", **fields))
        return result.last_event_id


class ExecutionStream:
    async def handle(self, session: Session, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            subscribe = ExecutionSubscribe.model_validate(message)
            await self._follow(session, subscribe, subscribe.execution_id, subscribe.since)
        elif kind == "unsubscribe":
            leave = StreamUnsubscribe.model_validate(message)
            session.unsubscribe("execution", leave.execution_id or "")
            await session.reply(leave)
        elif kind == "run":
            run = ExecutionRun.model_validate(message)
            session.check_room("execution", "")  # its output will be followed here
            fields = run.model_dump(exclude={"stream", "type", "id"})
            start = RunCommand(project_id=session.project_id, wait_s=0, **fields)
            result = await session.call(Operation.RUN_COMMAND, start)
            assert isinstance(result, CommandResult)
            await self._follow(session, run, result.execution_id, 0, result)
        elif kind == "stdin":
            stdin = ExecutionStdin.model_validate(message)
            sent = SendInput(execution_id=stdin.execution_id, data=stdin.data, eof=stdin.eof)
            await session.call(Operation.SEND_INPUT, sent)
            await session.reply(stdin)  # the output follows on the execution's subscription
        elif kind == "cancel":
            cancel = ExecutionCancel.model_validate(message)
            stop = CancelExecution(execution_id=cancel.execution_id)
            await session.reply(cancel, await session.call(Operation.CANCEL_EXECUTION, stop))
        else:
            raise _bad(f"unknown execution message type {kind!r}; see /api/v1/docs#websocket")

    async def _follow(
        self,
        session: Session,
        message: ClientMessage,
        execution_id: str,
        since: int,
        started: CommandResult | None = None,
    ) -> None:
        if started is None:  # (a command started here had its room checked first)
            session.check_room("execution", execution_id)
        first = await self._round(session, execution_id, since, wait_s=0)

        async def follow() -> None:
            piece = first
            while True:
                await self._deliver(session, execution_id, piece)
                if piece.finished:
                    return
                piece = await self._round(session, execution_id, piece.next_since, POLL_WAIT_S)

        await session.reply(message, started)
        session.subscribe("execution", execution_id, follow)

    @staticmethod
    async def _round(
        session: Session, execution_id: str, since: int, wait_s: float
    ) -> CommandOutput:
        request = ReadCommandOutput(execution_id=execution_id, since=since, wait_s=wait_s)
        result = await session.call(Operation.READ_COMMAND_OUTPUT, request)
        assert isinstance(result, CommandOutput)
        return result

    @staticmethod
    async def _deliver(session: Session, execution_id: str, piece: CommandOutput) -> None:
        if piece.stdout or piece.stderr:
            await session.send(
                server_message(
                    "execution",
                    "output",
                    execution_id=execution_id,
                    stdout=piece.stdout,
                    stderr=piece.stderr,
                    next_since=piece.next_since,
                )
            )
        if piece.finished:
            await session.send(
                server_message(
                    "execution",
                    "exit",
                    execution_id=execution_id,
                    status=piece.status,
                    exit_code=piece.exit_code,
                    reason=piece.reason,
                    next_since=piece.next_since,
                )
            )


class TerminalStream:
    """Terminals: open or attach (then output, resizes and the exit follow), input, resize,
    close, detach. Input is answered only when it fails or carries an ``id``: a keystroke
    costs one message each way, its echo."""

    async def handle(self, session: Session, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "open":
            opening = TerminalOpen.model_validate(message)
            fields = opening.model_dump(exclude={"stream", "type", "id", "encoding"})
            request = OpenTerminal(project_id=session.project_id, **fields)
            opened = await session.call(Operation.OPEN_TERMINAL, request)
            assert isinstance(opened, TerminalInfo)
            await self._follow(session, opening, opened.execution_id, 0, opening.encoding, opened)
        elif kind == "attach":
            attach = TerminalAttach.model_validate(message)
            await self._follow(session, attach, attach.execution_id, attach.since, attach.encoding)
        elif kind == "input":
            typed = TerminalInput.model_validate(message)
            data = typed.data
            if typed.encoding == "utf-8":  # exactly these bytes: no newline translation
                data = base64.b64encode(data.encode()).decode()
            write = TerminalWrite(execution_id=typed.execution_id, text=data, encoding="base64")
            written = await session.call(Operation.TERMINAL_WRITE, write)
            if typed.id is not None:
                await session.reply(typed, written)
        elif kind == "resize":
            resize = TerminalResize.model_validate(message)
            size = ResizeTerminal(
                execution_id=resize.execution_id, cols=resize.cols, rows=resize.rows
            )
            resized = await session.call(Operation.RESIZE_TERMINAL, size)
            if resize.id is not None:
                await session.reply(resize, resized)
        elif kind == "close":
            close = TerminalClose.model_validate(message)
            ending = CloseTerminal(execution_id=close.execution_id)
            await session.reply(close, await session.call(Operation.CLOSE_TERMINAL, ending))
        elif kind == "detach":
            detach = TerminalDetach.model_validate(message)
            session.unsubscribe("terminal", detach.execution_id)
            await session.reply(detach)
        else:
            raise _bad(f"unknown terminal message type {kind!r}; see /api/v1/docs#websocket")

    async def _follow(
        self,
        session: Session,
        message: ClientMessage,
        execution_id: str,
        since: int,
        encoding: str,
        opened: TerminalInfo | None = None,
    ) -> None:
        # The first round is made here, so a refusal (not a member, not a terminal) answers
        # this message.
        first = await self._round(session, execution_id, since, encoding, wait_s=0)

        async def follow() -> None:
            piece, size, cursor = first, (first.cols, first.rows), since
            while True:
                if (piece.cols, piece.rows) != size and piece.cols:
                    size = (piece.cols, piece.rows)
                    await session.send(
                        server_message(
                            "terminal",
                            "resize",
                            execution_id=execution_id,
                            cols=piece.cols,
                            rows=piece.rows,
                        )
                    )
                await self._deliver(session, execution_id, piece, cursor, encoding)
                if piece.finished:
                    return
                cursor = piece.next_since
                piece = await self._round(session, execution_id, cursor, encoding, POLL_WAIT_S)

        if opened is not None:
            await session.reply(message, opened)
        else:
            await session.reply(message, first.model_copy(update={"output": None}))
        session.subscribe("terminal", execution_id, follow)

    @staticmethod
    async def _round(
        session: Session, execution_id: str, since: int, encoding: str, wait_s: float
    ) -> TerminalView:
        request = TerminalRead(
            execution_id=execution_id,
            mode="output",
            since=since,
            wait_s=wait_s,
            settle_s=0,  # deliver at once: the echo of a keystroke is what a person waits for
            encoding="base64" if encoding == "base64" else "raw",
        )
        result = await session.call(Operation.TERMINAL_READ, request)
        assert isinstance(result, TerminalView)
        return result

    @staticmethod
    async def _deliver(
        session: Session, execution_id: str, piece: TerminalView, since: int, encoding: str
    ) -> None:
        if piece.output:
            await session.send(
                server_message(
                    "terminal",
                    "output",
                    execution_id=execution_id,
                    data=piece.output,
                    encoding=encoding,
                    since=since + piece.skipped,
                    next_since=piece.next_since,
                    skipped=piece.skipped,
                )
            )
        if piece.finished:
            await session.send(
                server_message(
                    "terminal",
                    "exit",
                    execution_id=execution_id,
                    status=piece.status,
                    exit_code=piece.exit_code,
                    reason=piece.reason,
                    next_since=piece.next_since,
                )
            )


STREAMS: dict[str, StreamKind] = {
    "session": SessionStream(),
    "events": EventsStream(),
    "execution": ExecutionStream(),
    "terminal": TerminalStream(),
}
