"""An upload's hidden gathering file cannot be used to write elsewhere or place other bytes in
the uploader's name (round three).

A streamed upload gathers its pieces in a hidden file beside the target, which every command
in the VM can reach. On main, another member's command replaced it with a symlink to
``hello.txt`` mid-upload: the next piece was appended to ``hello.txt`` (with no event), the
target became that symlink, and the uploader was answered 201 with the sha256 of bytes that
were nowhere, recorded as its write. Runs on the ``process`` driver: the defect is in the
core, whatever the VM.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.security.http_attacks import LiveServer, live_server

pytestmark = pytest.mark.anyio

PIECE = 4 * 1024 * 1024
TAMPERING = {
    "a symlink to another file": "rm {temp} && ln -s hello.txt {temp}",
    "bytes appended": "printf injected >> {temp}",
}


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[LiveServer]:
    async with live_server(data_dir, ("alice", "bob")) as live:
        yield live


@pytest.mark.parametrize("tampering", list(TAMPERING))
async def test_a_gathering_file_changed_mid_upload_fails_the_upload_and_writes_nothing_else(
    server: LiveServer, tampering: str
) -> None:
    async with server.rest("alice") as alice, server.rest("bob") as bob:
        project_id = (await alice.post("/projects", json={"name": "up"})).json()["project_id"]
        files = f"/projects/{project_id}/files"
        await alice.put(f"{files}/hello.txt", content=b"hello world")
        await alice.put(f"/projects/{project_id}/members/bob", json={"access_level": "read_write"})
        data = b"A" * (2 * PIECE)
        release = anyio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield data[: PIECE + 10]  # one piece is gathered; the rest waits
            await release.wait()
            yield data[PIECE + 10 :]

        answer: list[httpx.Response] = []
        async with anyio.create_task_group() as group:

            async def upload() -> None:
                headers = {"Content-Length": str(len(data))}
                target = f"{files}/report.bin"
                answer.append(await alice.put(target, content=body(), headers=headers))

            group.start_soon(upload)
            with anyio.fail_after(30):
                while True:  # each look is a real round trip
                    tree = await bob.get(
                        f"/projects/{project_id}/tree", params={"include_hidden": "true"}
                    )
                    temps = [e["path"] for e in tree.json()["entries"]]
                    temps = [p for p in temps if p.endswith(".pvm-upload")]
                    if temps:
                        break
            command = TAMPERING[tampering].format(temp=temps[0])
            run = await bob.post(
                f"/projects/{project_id}/executions", json={"command": command, "wait_s": 30}
            )
            assert run.json()["exit_code"] == 0, run.text
            release.set()
        response = answer[0]
        assert response.status_code == 409, response.text
        assert "changed by someone else" in response.json()["detail"]
        # Nothing was written through the gathering file, nothing placed in alice's name.
        hello = await alice.get(f"{files}/hello.txt")
        assert hello.content == b"hello world"
        assert (await alice.get(f"{files}/report.bin")).status_code == 404
        events = (await alice.get(f"/projects/{project_id}/events")).json()["events"]
        assert not [e for e in events if e["data"].get("path") == "report.bin"], events
