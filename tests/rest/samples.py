"""One call of every operation, as an MCP tool call and as the REST request a person would send.

The REST side is written out by hand (method, URL, body, headers), not derived from the
server's route table, so the tests check the table against what people expect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from server.domain.operations import Operation

# Answer a DELETE with its result (200) rather than 204, to compare it with MCP's.
REPRESENTATION = {"Prefer": "return=representation"}


@dataclass(frozen=True)
class Sample:
    mcp: dict[str, Any]
    method: str
    url: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    async def send(self, client: httpx.AsyncClient) -> httpx.Response:
        return await client.request(
            self.method, self.url, json=self.json, content=self.content, headers=self.headers
        )


def samples(
    project_id: str, execution_id: str, terminal_command: str | None = "true"
) -> dict[Operation, Sample]:
    """``terminal_command`` is what open_terminal runs: by default one that ends at once (the
    policy tests open dozens); None opens the login shell, which stays until the project
    stops (so listing terminals answers the same whenever it is asked)."""
    p, e = project_id, execution_id
    terminal = {"command": terminal_command} if terminal_command is not None else {}
    at = f"/projects/{p}"
    pid = {"project_id": p}
    eid = {"execution_id": e}
    o = Operation
    return {
        o.CREATE_PROJECT: Sample({"name": "made"}, "POST", "/projects", json={"name": "made"}),
        o.LIST_PROJECTS: Sample({}, "GET", "/projects"),
        o.WHOAMI: Sample({}, "GET", "/me"),
        o.GET_PROJECT: Sample(pid, "GET", at),
        o.START_PROJECT: Sample(pid, "POST", f"{at}/start"),
        o.STOP_PROJECT: Sample(pid, "POST", f"{at}/stop"),
        o.DELETE_PROJECT: Sample(pid, "DELETE", at, headers=REPRESENTATION),
        o.UPDATE_PROJECT_SETTINGS: Sample(
            {**pid, "settings": {"max_concurrent_executions": 3}},
            "PATCH",
            f"{at}/settings",
            json={"max_concurrent_executions": 3},
        ),
        o.RUN_COMMAND: Sample(
            {**pid, "command": "true"}, "POST", f"{at}/executions", json={"command": "true"}
        ),
        o.READ_COMMAND_OUTPUT: Sample(eid, "GET", f"/executions/{e}/output"),
        o.SEND_INPUT: Sample({**eid, "data": "x"}, "POST", f"/executions/{e}/input", {"data": "x"}),
        o.CANCEL_EXECUTION: Sample(eid, "POST", f"/executions/{e}/cancel"),
        o.LIST_EXECUTIONS: Sample(pid, "GET", f"{at}/executions"),
        o.GET_EXECUTION_HISTORY: Sample(pid, "GET", f"{at}/history"),
        o.READ_FILE: Sample(
            {**pid, "path": "a.txt"},
            "GET",
            f"{at}/files/a.txt",
            headers={"Accept": "application/json"},
        ),
        o.WRITE_FILE: Sample(
            {**pid, "path": "b.txt", "content": "b"}, "PUT", f"{at}/files/b.txt", content=b"b"
        ),
        o.EDIT_FILE: Sample(
            {**pid, "path": "a.txt", "edits": [{"old_text": "a", "new_text": "a"}]},
            "PATCH",
            f"{at}/files/a.txt",
            json={"edits": [{"old_text": "a", "new_text": "a"}]},
        ),
        o.LIST_FILES: Sample(pid, "GET", f"{at}/tree"),
        o.SEARCH_FILES: Sample({**pid, "pattern": "a"}, "GET", f"{at}/search?pattern=a"),
        o.DELETE_PATH: Sample(
            {**pid, "path": "nothing-here"},
            "DELETE",
            f"{at}/files/nothing-here",
            headers=REPRESENTATION,
        ),
        o.MOVE_PATH: Sample(
            {**pid, "source": "nothing-here", "destination": "x"},
            "POST",
            f"{at}/files:move",
            json={"source": "nothing-here", "destination": "x"},
        ),
        o.LIST_MEMBERS: Sample(pid, "GET", f"{at}/members"),
        o.ASSIGN_AGENT: Sample(
            {**pid, "agent_id": "alice", "access_level": "admin"},
            "PUT",
            f"{at}/members/alice",
            json={"access_level": "admin"},
        ),
        o.REMOVE_AGENT: Sample(
            {**pid, "agent_id": "nobody"},
            "DELETE",
            f"{at}/members/nobody",
            headers=REPRESENTATION,
        ),
        o.LOCK_PATH: Sample({**pid, "path": "a.txt"}, "PUT", f"{at}/locks/a.txt", json={}),
        o.UNLOCK_PATH: Sample(
            {**pid, "path": "a.txt"}, "DELETE", f"{at}/locks/a.txt", headers=REPRESENTATION
        ),
        o.LIST_LOCKS: Sample(pid, "GET", f"{at}/locks"),
        o.GET_EVENTS: Sample(pid, "GET", f"{at}/events"),
        o.OPEN_TERMINAL: Sample({**pid, **terminal}, "POST", f"{at}/terminals", json=terminal),
        o.LIST_TERMINALS: Sample(pid, "GET", f"{at}/terminals"),
        o.TERMINAL_READ: Sample(eid, "GET", f"/terminals/{e}"),
        o.TERMINAL_WRITE: Sample(
            {**eid, "text": "x"}, "POST", f"/terminals/{e}/input", json={"text": "x"}
        ),
        o.RESIZE_TERMINAL: Sample(
            {**eid, "cols": 100, "rows": 30},
            "PUT",
            f"/terminals/{e}/size",
            json={"cols": 100, "rows": 30},
        ),
        o.CLOSE_TERMINAL: Sample(eid, "DELETE", f"/terminals/{e}", headers=REPRESENTATION),
    }
