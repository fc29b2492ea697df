"""REST security: no token, a wrong token, another agent's project through every route, a
foreign Host or a foreign page — each refused with the right status, and nothing changed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from server.domain.operations import OPERATIONS, Operation
from server.surfaces.http.rest.routes import ROUTES
from tests.rest.conftest import MakeProject, Server
from tests.rest.samples import samples

pytestmark = pytest.mark.anyio


async def project_with_everything(alice: httpx.AsyncClient, make: MakeProject) -> tuple[str, str]:
    project_id = await make("guarded", members={"bob": "read_write"})
    await alice.put(f"/projects/{project_id}/files/a.txt", content=b"a")
    await alice.put(f"/projects/{project_id}/locks/a.txt", json={"ttl_s": 600})
    ran = await alice.post(f"/projects/{project_id}/executions", json={"command": "echo a"})
    return project_id, ran.json()["execution_id"]


async def snapshot(alice: httpx.AsyncClient, project_id: str) -> dict[str, Any]:
    """Everything a refused call could have changed, as alice sees it."""
    project = (await alice.get(f"/projects/{project_id}")).json()
    for volatile in ("usage", "last_activity_at"):
        project.pop(volatile, None)
    tree = (await alice.get(f"/projects/{project_id}/tree?recursive=true")).json()
    files = {
        entry["path"]: (await alice.get(f"/projects/{project_id}/files/{entry['path']}")).content
        for entry in tree["entries"]
        if entry["type"] == "file"
    }
    return {
        "project": project,
        "files": files,
        "locks": (await alice.get(f"/projects/{project_id}/locks")).json(),
        "history": (await alice.get(f"/projects/{project_id}/history")).json(),
        "events": (await alice.get(f"/projects/{project_id}/events?limit=1000")).json(),
    }


def concrete(url: str, project_id: str, execution_id: str) -> str:
    return (
        url.removeprefix("/api/v1")
        .replace("{project_id}", project_id)
        .replace("{execution_id}", execution_id)
        .replace("{path:path}", "a.txt")
        .replace("{agent_id}", "bob")
    )


async def test_no_token_or_a_wrong_one_is_refused_on_every_route_and_changes_nothing(
    server: Server, alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id, execution_id = await project_with_everything(alice_rest, rest_projects)
    before = await snapshot(alice_rest, project_id)
    credentials: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer pvm_wrong"},
        {"Authorization": f"Basic {server.tokens['alice']}"},
        {"Authorization": f"Bearer {server.tokens['alice']}x"},
    ]
    routes = [(route.method, concrete(route.url, project_id, execution_id)) for route in ROUTES]
    routes.append(("POST", "/ws-tickets"))
    async with server.rest(None) as anonymous:
        for headers in credentials:
            for method, url in routes:
                response = await anonymous.request(method, url, headers=headers, json={})
                assert response.status_code == 401, (method, url, headers, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert "projectvm agents add" in response.json()["detail"]
    assert await snapshot(alice_rest, project_id) == before


async def test_a_stranger_gets_nothing_from_another_agents_project_on_any_route(
    server: Server, alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id, execution_id = await project_with_everything(alice_rest, rest_projects)
    before = await snapshot(alice_rest, project_id)
    calls = samples(project_id, execution_id)
    refused = 0
    async with server.rest("dave") as dave:
        for operation, sample in calls.items():
            if OPERATIONS[operation].level is None:
                continue  # not about one project: whoami, list_projects, create_project
            response = await sample.send(dave)
            if operation == Operation.DELETE_PROJECT:
                # Idempotent DELETE: answered as for a project that is gone, learning nothing.
                assert response.status_code == 204, response.text
                continue
            assert response.status_code == 404, (operation, response.text)
            detail = response.json()["detail"]
            assert "is visible to agent 'dave'" in detail, (operation, detail)
            assert "echo a" not in response.text
            refused += 1
        listed = await dave.get("/projects")
        assert listed.json() == {"projects": []}
        ticket = await dave.post("/ws-tickets", json={"project_id": project_id})
        assert ticket.status_code == 404
    assert refused == sum(1 for spec in OPERATIONS.values() if spec.level is not None) - 1
    assert await snapshot(alice_rest, project_id) == before


async def test_a_foreign_host_or_a_change_from_a_foreign_page_is_refused(
    alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    project_id = await rest_projects("origins")
    rebound = await alice_rest.get("/me", headers={"Host": "evil.example.com"})
    assert rebound.status_code == 421
    assert rebound.headers["content-type"] == "application/problem+json"
    forged = await alice_rest.put(
        f"/projects/{project_id}/files/x.txt",
        content=b"x",
        headers={"Origin": "https://evil.example.com"},
    )
    assert forged.status_code == 403
    assert forged.json()["type"].endswith("#foreign-origin")
    assert (await alice_rest.get(f"/projects/{project_id}/files/x.txt")).status_code == 404
    own_page = await alice_rest.put(
        f"/projects/{project_id}/files/x.txt",
        content=b"x",
        headers={"Origin": str(alice_rest.base_url).split("/api/")[0]},
    )
    assert own_page.status_code == 201


async def test_the_docs_and_the_openapi_document_need_no_token_but_nothing_else_is_public(
    server: Server,
) -> None:
    async with server.rest(None) as anonymous:
        assert (await anonymous.get("/docs")).status_code == 200
        assert (await anonymous.get("/openapi.json")).status_code == 200
        assert (await anonymous.get("/me")).status_code == 401
        assert (await anonymous.get("/nowhere")).status_code == 401
