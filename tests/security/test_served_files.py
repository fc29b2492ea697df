"""A file an agent wrote is never served as a page of the server (round three).

Raw downloads carried the type guessed from the name: an ``x.html`` a read_write member wrote
was served as ``text/html`` from the API's own origin, so a person opening the link with a
browser session (the dashboard's cookie) would run its script as themselves. Runs on the
``process`` driver: it happens in the HTTP surface.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.security.http_attacks import LiveServer, live_server

pytestmark = pytest.mark.anyio

PAGE = b"<script>fetch('/api/v1/projects').then(r => r.text()).then(alert)</script>"


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[LiveServer]:
    async with live_server(data_dir, ("alice", "bob")) as live:
        yield live


@pytest.mark.parametrize("name", ["x.html", "x.svg", "x.xml", "x.txt", "x.bin"])
async def test_a_file_is_served_sandboxed_and_pages_only_as_downloads(
    server: LiveServer, name: str
) -> None:
    async with server.rest("alice") as alice, server.rest("bob") as bob:
        project_id = (await alice.post("/projects", json={"name": "pages"})).json()["project_id"]
        await alice.put(f"/projects/{project_id}/members/bob", json={"access_level": "read_write"})
        assert (await bob.put(f"/projects/{project_id}/files/{name}", content=PAGE)).is_success
        served = await alice.get(f"/projects/{project_id}/files/{name}")
        ranged = await alice.get(
            f"/projects/{project_id}/files/{name}", headers={"Range": "bytes=0-9"}
        )
    assert served.content == PAGE
    for response in (served, ranged):
        assert response.headers["x-content-type-options"] == "nosniff"
        policy = response.headers["content-security-policy"]
        assert "sandbox" in policy
        assert "default-src 'none'" in policy
    page = name.endswith((".html", ".svg", ".xml"))
    disposition = served.headers.get("content-disposition", "")
    assert disposition.startswith("attachment") == page, disposition
