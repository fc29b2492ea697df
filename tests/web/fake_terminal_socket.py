"""A fake project WebSocket, played by the test inside the browser's network stack, that
offers the ``terminal`` stream as ``server/surfaces/http/ws`` specifies it (open, input,
resize, close, attach; output as base64 with a byte cursor; exit): it answers every other
message with an ack, opens one terminal whose "shell" echoes each line it is sent, and records
what the page sent.

It stands in for the server's terminal stream where this branch has none (issue 11, item 3,
built on another branch) and lets a test drop the connection at will; the real stream is
tested by ``test_a_terminal_opens_in_the_browser_and_runs_a_command``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

PROMPT = "fake$ "
TERMINAL = "exe_fake_terminal"


@dataclass
class FakeTerminalSocket:
    project_id: str
    sent: list[dict[str, Any]] = field(default_factory=list)
    line: str = ""
    printed: bytes = b""  # everything the terminal printed; cursors index it
    routes: list[Any] = field(default_factory=list)

    def attach(self, route: Any) -> None:
        """Play the server for one WebSocket the page opened (``page.route_web_socket``)."""
        self.routes.append(route)

        def send(**message: Any) -> None:
            route.send(json.dumps(message))

        def output(since: int) -> None:
            """What the terminal printed after byte ``since``, as the server sends it."""
            data = self.printed[since:]
            if data:
                send(
                    stream="terminal", type="output", execution_id=TERMINAL,
                    data=base64.b64encode(data).decode(), encoding="base64",
                    since=since, next_since=len(self.printed), skipped=0,
                )  # fmt: skip

        def show(text: str) -> None:
            start = len(self.printed)
            self.printed += text.encode()
            output(start)

        def receive(text: str | bytes) -> None:
            message = json.loads(text)
            self.sent.append(message)
            stream, kind = message.get("stream"), message.get("type")
            if stream != "terminal":
                send(stream=stream, type="ack", id=message.get("id"))
            elif kind == "open":
                info = {"execution_id": TERMINAL, "status": "running", "command": "fake-shell"}
                send(stream="terminal", type="ack", id=message["id"], result=info)
                show(PROMPT)
            elif kind == "attach":
                send(stream="terminal", type="ack", id=message["id"], result={})
                output(message["since"])
            elif kind == "input":
                for char in message["data"]:
                    if char == "\r":
                        show(f"\r\nthe fake shell got: {self.line}\r\n{PROMPT}")
                        self.line = ""
                    else:
                        self.line += char
                        show(char)
            elif kind == "close":
                send(
                    stream="terminal", type="exit", execution_id=TERMINAL, status="completed",
                    exit_code=0, reason=None, next_since=len(self.printed),
                )  # fmt: skip
                send(stream="terminal", type="ack", id=message["id"], result={})

        route.on_message(receive)
        send(
            stream="session", type="hello", agent_id="alice", project_id=self.project_id,
            streams=["events", "execution", "session", "terminal"],
        )  # fmt: skip

    def prints_unseen(self, text: str) -> None:
        """The terminal prints while no page is connected: only a re-attach shows it."""
        self.printed += text.encode()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("stream") == "terminal" and m.get("type") == kind]
