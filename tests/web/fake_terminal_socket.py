"""A fake project WebSocket, played by the test inside the browser's network stack, that
offers the ``terminal`` stream: it answers every message with an ack, opens one terminal whose
"shell" echoes each line it is sent, and records what the page sent.

It stands in for the server's terminal stream (issue 11, item 3, built elsewhere) so that the
dashboard's terminal panel, xterm.js under the page's Content-Security-Policy included, is
tested before that stream exists; the real one is tested by
``test_a_terminal_opens_in_the_browser_and_runs_a_command``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PROMPT = "fake$ "


@dataclass
class FakeTerminalSocket:
    project_id: str
    sent: list[dict[str, Any]] = field(default_factory=list)
    line: str = ""

    def attach(self, route: Any) -> None:
        """Play the server for one WebSocket the page opened (``page.route_web_socket``)."""

        def send(**message: Any) -> None:
            route.send(json.dumps(message))

        def receive(text: str | bytes) -> None:
            message = json.loads(text)
            self.sent.append(message)
            stream, kind = message.get("stream"), message.get("type")
            if stream != "terminal":
                send(stream=stream, type="ack", id=message.get("id"))
            elif kind == "open":
                send(stream="terminal", type="ack", id=message["id"], result={"terminal_id": "t1"})
                send(stream="terminal", type="output", terminal_id="t1", data=PROMPT)
            elif kind == "input":
                for char in message["data"]:
                    if char == "\r":
                        reply = f"\r\nthe fake shell got: {self.line}\r\n{PROMPT}"
                        send(stream="terminal", type="output", terminal_id="t1", data=reply)
                        self.line = ""
                    else:
                        self.line += char
                        send(stream="terminal", type="output", terminal_id="t1", data=char)
            elif kind == "close":
                send(stream="terminal", type="ack", id=message["id"])
                send(stream="terminal", type="exit", terminal_id="t1", exit_code=0)

        route.on_message(receive)
        send(
            stream="session", type="hello", agent_id="alice", project_id=self.project_id,
            streams=["events", "execution", "session", "terminal"],
        )  # fmt: skip

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("stream") == "terminal" and m.get("type") == kind]
