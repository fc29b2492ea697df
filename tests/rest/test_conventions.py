"""The conventions people expect of a REST API: 201 + Location, ETag / If-Match / If-None-Match,
cursor paging with Link headers, problem+json, idempotent DELETE, 202 for work in progress,
streamed output, an OpenAPI 3.1 document and a self-contained docs page."""

from __future__ import annotations

import hashlib
import json
import re

import anyio
import httpx
import pytest
from openapi_spec_validator import validate

from server.surfaces.http.rest.routes import ROUTES
from tests.helpers import eventually
from tests.rest.conftest import MakeProject, Server

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def etag(data: bytes) -> str:
    return f'"{sha(data)}"'


async def test_creating_a_project_answers_201_with_a_location_that_serves_it(
    alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    created = await alice_rest.post("/projects", json={"name": "located"})
    assert created.status_code == 201
    location = created.headers["location"]
    assert location == f"/api/v1/projects/{created.json()['project_id']}"
    shown = await alice_rest.get(location.removeprefix("/api/v1"))
    assert shown.status_code == 200
    assert shown.json()["name"] == "located"
    assert (await alice_rest.delete(location.removeprefix("/api/v1"))).status_code == 204


async def test_a_stale_if_match_is_a_412_naming_the_current_sha_and_who_changed_it(
    server: Server, alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("etags", members={"bob": "read_write"})
    url = f"/projects/{project_id}/files/notes.md"
    first = await alice_rest.put(url, content=b"first\n")
    assert first.status_code == 201
    assert first.headers["etag"] == etag(b"first\n")
    async with server.rest("bob") as bob:
        changed = await bob.put(
            url, content=b"bob's\n", headers={"If-Match": first.headers["etag"]}
        )
    assert changed.status_code == 200
    stale = await alice_rest.put(
        url, content=b"alice's\n", headers={"If-Match": first.headers["etag"]}
    )
    assert stale.status_code == 412
    assert stale.headers["content-type"] == PROBLEM
    problem = stale.json()
    assert problem["current_sha256"] == sha(b"bob's\n")
    assert problem["changed_by"] == "bob"
    assert "last changed by bob" in problem["detail"]
    assert stale.headers["etag"] == etag(b"bob's\n")
    assert (await alice_rest.get(url)).content == b"bob's\n"
    # If-None-Match: * creates only.
    exists = await alice_rest.put(url, content=b"x", headers={"If-None-Match": "*"})
    assert exists.status_code == 412
    fresh = await alice_rest.put(f"{url}.new", content=b"x", headers={"If-None-Match": "*"})
    assert fresh.status_code == 201
    assert fresh.headers["location"].endswith(f"/projects/{project_id}/files/notes.md.new")


async def test_if_none_match_with_the_current_etag_answers_304_until_the_file_changes(
    alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("cache")
    url = f"/projects/{project_id}/files/data.bin"
    await alice_rest.put(url, content=b"\x00\x01binary")
    read = await alice_rest.get(url)
    assert read.status_code == 200
    assert read.content == b"\x00\x01binary"
    assert read.headers["content-type"] == "application/octet-stream"
    tag = read.headers["etag"]
    cached = await alice_rest.get(url, headers={"If-None-Match": tag})
    assert cached.status_code == 304
    assert cached.content == b""
    await alice_rest.put(url, content=b"new")
    assert (await alice_rest.get(url, headers={"If-None-Match": tag})).status_code == 200
    as_json = await alice_rest.get(url, headers={"Accept": "application/json"})
    assert as_json.json()["encoding"] == "utf-8"
    assert as_json.json()["content"] == "new"
    assert as_json.headers["etag"] == etag(b"new")


async def test_history_pages_by_cursor_with_link_headers_and_next_cursor(
    alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("paged")
    ran = []
    for number in range(5):
        response = await alice_rest.post(
            f"/projects/{project_id}/executions", json={"command": f"echo {number}"}
        )
        ran.append(response.json()["execution_id"])
    seen: list[str] = []
    url: str | None = f"/projects/{project_id}/history?limit=2"
    pages = 0
    while url is not None:
        page = await alice_rest.get(url)
        assert page.status_code == 200
        body = page.json()
        seen += [row["execution_id"] for row in body["executions"]]
        pages += 1
        link = page.headers.get("link")
        if link is None:
            assert not body["has_more"]
            url = None
        else:
            target = re.fullmatch(r'<(.+)>; rel="next"', link)
            assert target is not None, link
            assert f"cursor={body['next_cursor']}" in target.group(1)
            url = target.group(1).removeprefix("/api/v1")
    assert pages == 3
    assert seen == list(reversed(ran))


async def test_errors_are_problem_documents_that_say_what_to_do(
    alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("problems")
    missing = await alice_rest.post(f"/projects/{project_id}/executions", json={})
    assert missing.status_code == 422
    assert missing.headers["content-type"] == PROBLEM
    assert missing.json()["errors"][0]["field"] == "command"
    assert "fix them and send it again" in missing.json()["detail"]
    unknown = await alice_rest.get(f"/projects/{project_id}/tree?recursiv=true")
    assert unknown.status_code == 422
    assert "recursiv" in unknown.json()["detail"]
    broken = await alice_rest.post(
        f"/projects/{project_id}/executions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert broken.status_code == 400
    assert broken.json()["type"] == "/api/v1/docs#malformed-json"
    gone = await alice_rest.get("/executions/exe_0000000000000000")
    assert gone.status_code == 404
    assert "list_executions or get_execution_history show the ids" in gone.json()["detail"]
    wrong_method = await alice_rest.post(f"/projects/{project_id}/members")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "GET"
    nowhere = await alice_rest.get("/nowhere")
    assert nowhere.status_code == 404
    assert nowhere.headers["content-type"] == PROBLEM


async def test_delete_answers_204_also_when_it_was_already_gone(
    alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("deletes", members={"bob": "read_only"})
    await alice_rest.put(f"/projects/{project_id}/files/f.txt", content=b"f")
    await alice_rest.put(f"/projects/{project_id}/locks/f.txt", json={"ttl_s": 60})
    for url in (
        f"/projects/{project_id}/files/f.txt",
        f"/projects/{project_id}/locks/f.txt",
        f"/projects/{project_id}/members/bob",
    ):
        assert (await alice_rest.delete(url)).status_code == 204, url
        again = await alice_rest.delete(url)
        assert again.status_code == 204, (url, again.text)
    assert (await alice_rest.get(f"/projects/{project_id}/files/f.txt")).status_code == 404
    members = (await alice_rest.get(f"/projects/{project_id}/members")).json()["members"]
    assert [member["agent_id"] for member in members] == ["alice"]
    assert (await alice_rest.delete(f"/projects/{project_id}")).status_code == 204
    assert (await alice_rest.delete(f"/projects/{project_id}")).status_code == 204
    assert (await alice_rest.get(f"/projects/{project_id}")).status_code == 404
    told = await alice_rest.delete(
        f"/projects/{project_id}/files/f.txt", headers={"Prefer": "return=representation"}
    )
    assert told.status_code == 404  # the project itself is gone: that is not "already gone"


async def test_a_running_command_answers_202_then_its_output_streams_as_ndjson(
    alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("stream")
    script = "for i in 1 2 3; do echo line $i; sleep 0.2; done"
    started = await alice_rest.post(
        f"/projects/{project_id}/executions", json={"command": script, "wait_s": 0}
    )
    assert started.status_code == 202
    location = started.headers["location"].removeprefix("/api/v1")
    pieces = []
    async with alice_rest.stream(
        "GET", f"{location}/output", headers={"Accept": "application/x-ndjson"}
    ) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        async for line in response.aiter_lines():
            if line:
                pieces.append(json.loads(line))
    assert pieces[-1]["finished"] is True
    assert pieces[-1]["status"] == "completed"
    assert "".join(piece["stdout"] for piece in pieces) == "line 1\nline 2\nline 3\n"
    assert len(pieces) >= 2  # it came in pieces, as it was written
    since = [piece["next_since"] for piece in pieces]
    assert since == sorted(since)
    shown = await alice_rest.get(location)
    assert shown.json()["stdout"] == "line 1\nline 2\nline 3\n"


async def test_a_client_that_hangs_up_on_run_command_cancels_the_command(
    server: Server, alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("hangup")
    async with server.rest("alice") as impatient:
        with anyio.move_on_after(2):
            await impatient.post(f"/projects/{project_id}/executions", json={"command": "sleep 60"})

    async def cancelled() -> bool:
        history = (await alice_rest.get(f"/projects/{project_id}/history")).json()
        return [row["status"] for row in history["executions"]] == ["cancelled"]

    await eventually(cancelled, timeout=30, what="the command being cancelled")


async def test_the_openapi_document_is_valid_and_the_docs_page_is_self_contained(
    server: Server,
) -> None:
    async with server.rest(None) as anonymous:
        document = (await anonymous.get("/openapi.json")).json()
        page = await anonymous.get("/docs")
    validate(document)
    assert document["openapi"].startswith("3.1")
    for route in ROUTES:
        template = route.url.replace("{path:path}", "{path}")
        assert route.method.lower() in document["paths"][template], route
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert not re.search(r'(src|href)="(https?:)?//', page.text), "nothing from elsewhere"
    for operation in ("run_command", "write_file", "get_events"):
        assert f'id="{operation}"' in page.text
    assert 'id="stale-write"' in page.text


async def test_small_answers_on_a_kept_alive_connection_do_not_wait_for_delayed_acks(
    server: Server,
) -> None:
    """A short answer is written in two parts (headers, body); without TCP_NODELAY the second
    waits for the client's delayed ACK, some 40 ms on every request after the first."""
    async with httpx.AsyncClient(base_url=server.base) as client:
        await client.get("/healthz")
        took = []
        for _ in range(21):
            began = anyio.current_time()
            assert (await client.get("/healthz")).status_code == 200
            took.append(anyio.current_time() - began)
    assert sorted(took)[10] < 0.02, f"median {sorted(took)[10] * 1000:.1f} ms"


async def test_a_range_of_a_file_is_served_with_206_and_content_range(
    alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("ranges")
    url = f"/projects/{project_id}/files/digits.txt"
    await alice_rest.put(url, content=b"0123456789")
    whole = await alice_rest.get(url)
    assert whole.headers["accept-ranges"] == "bytes"
    for asked, part, content_range in (
        ("bytes=2-4", b"234", "bytes 2-4/10"),
        ("bytes=7-", b"789", "bytes 7-9/10"),
        ("bytes=-2", b"89", "bytes 8-9/10"),
        ("bytes=8-100", b"89", "bytes 8-9/10"),
    ):
        response = await alice_rest.get(url, headers={"Range": asked})
        assert response.status_code == 206, asked
        assert response.content == part, asked
        assert response.headers["content-range"] == content_range
        assert response.headers["etag"] == whole.headers["etag"]
    beyond = await alice_rest.get(url, headers={"Range": "bytes=20-30"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == "bytes */10"
