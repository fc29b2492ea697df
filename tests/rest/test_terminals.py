"""Terminals for people: over the project WebSocket a real TTY program runs, survives a resize
and leaves its session in the history; watchers follow it; access is checked per message; a
stop kills open terminals and says why."""

from __future__ import annotations

import base64
import shutil
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.rest.conftest import MakeProject, Server
from tests.rest.test_websocket import receive, send, socket

pytestmark = pytest.mark.anyio


def requires_program(name: str, package: str) -> None:
    """The local sandbox (its host view) runs the host's programs: a TTY program to test with
    must be installed here."""
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed on this host (apt-get install {package})")


class Watcher:
    """One socket's view of one terminal: its output so far, its size messages, its exit."""

    def __init__(self, ws: ClientConnection, execution_id: str) -> None:
        self.ws = ws
        self.execution_id = execution_id
        self.output = bytearray()
        self.sizes: list[tuple[int, int]] = []
        self.exit: dict[str, Any] | None = None
        self.cursor = 0
        self.others: list[dict[str, Any]] = []

    async def until(self, pattern: bytes, *, timeout: float = 60) -> bytes:
        start = len(self.output)
        while pattern not in self.output[start:]:
            await self.take(timeout)
        return bytes(self.output[start:])

    async def until_exit(self, *, timeout: float = 60) -> dict[str, Any]:
        while self.exit is None:
            await self.take(timeout)
        return self.exit

    async def take(self, timeout: float) -> None:
        try:
            message = await receive(self.ws, timeout)
        except TimeoutError:
            so_far = bytes(self.output)
            raise AssertionError(f"nothing more came; the output so far: {so_far!r}") from None
        if message.get("execution_id") != self.execution_id or message["stream"] != "terminal":
            self.others.append(message)
            return
        if message["type"] == "output":
            assert message["since"] == self.cursor, "output continues exactly where it stopped"
            assert message["encoding"] == "base64"
            self.output += base64.b64decode(message["data"])
            self.cursor = message["next_since"]
        elif message["type"] == "resize":
            self.sizes.append((message["cols"], message["rows"]))
        elif message["type"] == "exit":
            self.exit = message
        else:
            self.others.append(message)

    async def type(self, text: str) -> None:
        await send(
            self.ws, stream="terminal", type="input", execution_id=self.execution_id, data=text
        )


async def open_over(ws: ClientConnection, **fields: Any) -> Watcher:
    await send(ws, stream="terminal", type="open", id="open", **fields)
    ack = await receive(ws)
    assert ack["type"] == "ack", ack
    assert ack["id"] == "open"
    return Watcher(ws, ack["result"]["execution_id"])


async def test_a_terminal_over_the_websocket_runs_vim_survives_a_resize_and_is_in_the_history(
    server: Server, alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    requires_program("vim", "vim")
    project_id = await rest_projects("editing", members={"bob": "read_write"})
    async with socket(server, project_id, "bob") as ws:
        shell = await open_over(ws, cols=80, rows=24)
        await shell.type("stty size; echo $TERM\r")
        await shell.until(b"24 80\r\nxterm-256color")
        await shell.type("vim -u NONE -N notes.txt\r")
        screen = await shell.until(b'"notes.txt" [New')  # vim's message line
        assert b"\x1b[?1049h" in screen  # vim switched to the alternate screen: a real TTY
        await send(
            ws, stream="terminal", type="resize", execution_id=shell.execution_id, cols=120, rows=40
        )
        # vim redrew for the new size: 39 rows of text, 120 columns wide (its 40th: commands).
        redrawn = await shell.until(b"\x1b[39;1H~")
        assert b"~" + b" " * 119 in redrawn
        assert shell.sizes == [(120, 40)]
        await shell.type("ihello from vim\x1b:wq\r")
        await shell.until(b"\x1b[?1049l")  # and left it when it quit
        await shell.type("stty size; cat notes.txt\r")
        await shell.until(b"40 120\r\nhello from vim")
        await shell.type("exit\r")
        ended = await shell.until_exit()
    assert (ended["status"], ended["exit_code"]) == ("completed", 0)
    saved = await alice_rest.get(f"/projects/{project_id}/files/notes.txt")
    assert saved.content == b"hello from vim\n"
    history = (await alice_rest.get(f"/projects/{project_id}/history")).json()
    [session] = [row for row in history["executions"] if row["kind"] == "terminal"]
    assert session["execution_id"] == shell.execution_id
    assert session["agent_id"] == "bob"
    assert session["command"].endswith("sh -l")  # the login shell it ran
    assert (session["status"], session["exit_code"]) == ("completed", 0)
    assert session["started_at"] is not None
    assert session["completed_at"] is not None
    assert session["duration_ms"] > 0


async def test_top_runs_in_a_terminal_and_quits_on_a_key(
    server: Server, rest_projects: MakeProject
) -> None:
    requires_program("top", "procps")
    project_id = await rest_projects("watching")
    async with socket(server, project_id, "alice") as ws:
        top = await open_over(ws, command="top -d 1", cols=100, rows=30)
        await top.until(b"load average")
        await top.type("q")
        ended = await top.until_exit()
    assert (ended["status"], ended["exit_code"]) == ("completed", 0)


async def test_a_read_only_member_watches_a_terminal_but_cannot_type_resize_or_close_it(
    server: Server, alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("pairing", members={"bob": "read_write", "carol": "read_only"})
    opened = await alice_rest.post(f"/projects/{project_id}/terminals", json={"command": "cat"})
    assert opened.status_code == 201, opened.text
    execution_id = opened.json()["execution_id"]
    assert opened.headers["location"] == f"/api/v1/terminals/{execution_id}"
    async with (
        socket(server, project_id, "alice") as alice_ws,
        socket(server, project_id, "bob") as bob_ws,
        socket(server, project_id, "carol") as carol_ws,
    ):
        carol = Watcher(carol_ws, execution_id)
        await send(carol_ws, stream="terminal", type="attach", execution_id=execution_id, id=1)
        attached = await receive(carol_ws)
        assert attached["type"] == "ack", attached
        assert (attached["result"]["cols"], attached["result"]["rows"]) == (80, 24)
        for ws, expected in ((carol_ws, "needs read_write"), (bob_ws, "belongs to alice")):
            for message in (
                {"type": "input", "data": "rm -rf /workspace\r"},
                {"type": "resize", "cols": 90, "rows": 30},
                {"type": "close"},
            ):
                await send(ws, stream="terminal", execution_id=execution_id, id="no", **message)
                refused = await receive(ws)
                assert refused["type"] == "error", refused
                assert refused["problem"]["status"] == 403
                assert expected in refused["problem"]["detail"], refused
        alice = Watcher(alice_ws, execution_id)
        await alice.type("only alice types\r")
        await carol.until(b"only alice types\r\nonly alice types\r\n")  # the echo, then cat
        closed = await alice_rest.delete(f"/terminals/{execution_id}")
        assert closed.status_code == 204
        ended = await carol.until_exit()
    assert ended["status"] == "completed"
    assert ended["reason"] == "closed by alice"
    assert b"rm -rf" not in carol.output


async def test_a_watcher_resumes_from_its_cursor_without_repeats(
    server: Server, alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("resuming")
    opened = await alice_rest.post(f"/projects/{project_id}/terminals", json={"command": "cat"})
    execution_id = opened.json()["execution_id"]
    async with socket(server, project_id, "alice") as ws:
        first = Watcher(ws, execution_id)
        await send(ws, stream="terminal", type="attach", execution_id=execution_id)
        assert (await receive(ws))["type"] == "ack"
        await first.type("one\r")
        await first.until(b"one\r\none\r\n")
        cursor = first.cursor
    typed = await alice_rest.post(f"/terminals/{execution_id}/input", json={"text": "two\n"})
    assert typed.status_code == 200, typed.text
    assert typed.json()["next_since"] == cursor
    async with socket(server, project_id, "alice") as ws:
        again = Watcher(ws, execution_id)
        again.cursor = cursor
        await send(ws, stream="terminal", type="attach", execution_id=execution_id, since=cursor)
        assert (await receive(ws))["type"] == "ack"
        assert await again.until(b"two\r\ntwo\r\n") == b"two\r\ntwo\r\n"
    await alice_rest.delete(f"/terminals/{execution_id}")


async def test_stopping_the_project_kills_its_terminals_and_records_why(
    server: Server, alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects(
        "stopping", members={"bob": "read_write"}, max_concurrent_executions=1
    )
    running = await alice_rest.post(f"/projects/{project_id}/terminals", json={})
    async with server.rest("bob") as bob_rest:  # one agent holds at most one terminal here
        waiting = await bob_rest.post(f"/projects/{project_id}/terminals", json={})
    assert (running.json()["status"], waiting.json()["status"]) == ("running", "queued")
    listed = (await alice_rest.get(f"/projects/{project_id}/terminals")).json()["terminals"]
    assert [t["queue_position"] for t in listed] == [None, 1]
    async with socket(server, project_id, "alice") as ws:
        watcher = Watcher(ws, running.json()["execution_id"])
        await send(ws, stream="terminal", type="attach", execution_id=watcher.execution_id)
        assert (await receive(ws))["type"] == "ack"
        stopped = await alice_rest.post(f"/projects/{project_id}/stop")
        assert stopped.status_code == 200, stopped.text
        ended = await watcher.until_exit()
    assert ended["status"] == "killed"
    assert ended["reason"] == "the project was stopped by alice while it ran"
    history = (await alice_rest.get(f"/projects/{project_id}/history")).json()["executions"]
    assert {(row["kind"], row["status"], row["reason"]) for row in history} == {
        ("terminal", "killed", "the project was stopped by alice while it ran")
    }
    assert len(history) == 2
    assert (await alice_rest.get(f"/projects/{project_id}/terminals")).json()["terminals"] == []
