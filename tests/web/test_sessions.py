"""The dashboard's sign-in session against a real server process: the cookie's flags, the CSRF
token that every change needs, foreign pages refused, signing out and replaced tokens ending
sessions, and the headers that keep the pages to themselves. Plain HTTP clients, no browser:
what a forged request from another site or a stolen cookie could do."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from server.core.agents import Agents
from server.domain.config import ServerConfig
from server.store import Store
from tests.web.conftest import WebServer

pytestmark = pytest.mark.anyio

FOREIGN = "https://evil.example"
PROTOCOL = Subprotocol("projectvm.v1")


@dataclass
class SignedIn:
    cookie: str  # the Cookie header value
    csrf: str
    set_cookie: str  # the Set-Cookie the server sent


async def sign_in(web: WebServer, agent: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=web.base, timeout=60) as client:
        return await client.post(
            "/ui/session",
            json={"token": web.tokens[agent]},
            headers={"Origin": web.base, **headers},
        )


async def signed_in(web: WebServer, agent: str = "alice") -> SignedIn:
    response = await sign_in(web, agent)
    assert response.status_code == 201, response.text
    set_cookie = response.headers["set-cookie"]
    jar: SimpleCookie = SimpleCookie()
    jar.load(set_cookie)
    return SignedIn(
        f"pvm_session={jar['pvm_session'].value}", response.json()["csrf_token"], set_cookie
    )


@asynccontextmanager
async def as_browser(
    web: WebServer, session: SignedIn, origin: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """What a page sends: the cookie (the browser adds it) and the Origin of the page."""
    headers = {"Cookie": session.cookie, "Origin": origin or web.base}
    async with httpx.AsyncClient(
        base_url=web.base + "/api/v1", headers=headers, timeout=60
    ) as client:
        yield client


async def snapshot(web: WebServer) -> dict[str, Any]:
    """What alice can see: projects, and each one's members, files and events."""
    async with web.rest("alice") as alice:
        projects = (await alice.get("/projects")).json()["projects"]
        seen: dict[str, Any] = {"projects": sorted(p["project_id"] for p in projects)}
        for project in projects:
            pid = project["project_id"]
            seen[pid] = [
                (await alice.get(f"/projects/{pid}/members")).json()["members"],
                (await alice.get(f"/projects/{pid}/tree?recursive=true")).json()["entries"],
                (await alice.get(f"/projects/{pid}/events")).json()["last_event_id"],
                (await alice.get(f"/projects/{pid}")).json()["settings"],
            ]
    return seen


async def test_signing_in_sets_an_httponly_samesite_strict_cookie_for_the_whole_site(
    web: WebServer,
) -> None:
    session = await signed_in(web)
    jar: SimpleCookie = SimpleCookie()
    jar.load(session.set_cookie)
    cookie = jar["pvm_session"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    assert int(cookie["max-age"]) > 0
    assert web.tokens["alice"] not in session.set_cookie  # the cookie is not the token
    async with as_browser(web, session) as page:
        me = await page.get("/me")
    assert me.status_code == 200
    assert me.json()["agent_id"] == "alice"


async def test_a_wrong_token_gets_no_session(web: WebServer) -> None:
    async with httpx.AsyncClient(base_url=web.base, timeout=60) as client:
        wrong = await client.post("/ui/session", json={"token": "pvm_not-a-token"})
        as_form = await client.post("/ui/session", data={"token": web.tokens["alice"]})
    assert wrong.status_code == 401
    assert "projectvm agents add" in wrong.json()["message"]
    assert as_form.status_code == 415  # a cross-site HTML form cannot send JSON
    assert "set-cookie" not in wrong.headers
    assert "set-cookie" not in as_form.headers


async def test_a_cookie_session_change_without_the_csrf_token_is_refused_and_changes_nothing(
    web: WebServer,
) -> None:
    project_id = await web.project("csrf-target", {"bob": "read_write"})
    session = await signed_in(web)
    before = await snapshot(web)
    project = f"/projects/{project_id}"
    changes = [
        ("POST", "/projects", {"json": {"name": "forged"}}),
        ("PUT", f"{project}/files/forged.txt", {"content": b"forged"}),
        ("PATCH", f"{project}/settings", {"json": {"network": "egress"}}),
        ("DELETE", f"{project}/members/bob", {}),
        ("POST", f"{project}/executions", {"json": {"command": "touch forged"}}),
        ("DELETE", project, {}),
    ]
    async with as_browser(web, session) as page:
        for csrf in (None, "", "not-the-token", session.csrf[:-1]):
            headers = {"X-CSRF-Token": csrf} if csrf is not None else {}
            for method, path, body in changes:
                refused = await page.request(method, path, headers=headers, **body)
                assert refused.status_code == 403, (method, path, csrf, refused.text)
                assert refused.json()["type"].endswith("#csrf-check-failed")
        assert await snapshot(web) == before
        # Reads need no token; a change with it goes through.
        assert (await page.get(f"{project}/members")).status_code == 200
        made = await page.put(
            f"{project}/files/by-the-page.txt",
            content=b"from the dashboard",
            headers={"X-CSRF-Token": session.csrf},
        )
    assert made.status_code == 201, made.text


async def test_bearer_clients_need_no_csrf_token(web: WebServer) -> None:
    async with web.rest("alice") as alice:
        created = await alice.post("/projects", json={"name": "bearer-made"})
    assert created.status_code == 201, created.text


async def test_pages_of_another_site_can_neither_sign_in_nor_change_anything(
    web: WebServer,
) -> None:
    project_id = await web.project("origin-target")
    foreign_sign_in = await sign_in(web, "alice", Origin=FOREIGN)
    assert foreign_sign_in.status_code == 403
    assert "set-cookie" not in foreign_sign_in.headers

    session = await signed_in(web)
    before = await snapshot(web)
    async with as_browser(web, session, origin=FOREIGN) as page:
        # Even with the CSRF token (a leak), another site's page changes nothing.
        forged = await page.post(
            "/projects", json={"name": "forged"}, headers={"X-CSRF-Token": session.csrf}
        )
    assert forged.status_code == 403
    assert forged.json()["type"].endswith("#foreign-origin")
    assert await snapshot(web) == before

    ws_url = web.base.replace("http://", "ws://") + f"/api/v1/projects/{project_id}/ws"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            ws_url, subprotocols=[PROTOCOL], origin=FOREIGN,  # type: ignore[arg-type]
            additional_headers={"Cookie": session.cookie},
        ):  # fmt: skip
            pass
    assert refused.value.response.status_code == 403


async def test_the_session_cookie_opens_the_project_websocket_only_from_our_own_pages(
    web: WebServer,
) -> None:
    project_id = await web.project("socket-target")
    session = await signed_in(web)
    ws_url = web.base.replace("http://", "ws://") + f"/api/v1/projects/{project_id}/ws"
    async with connect(
        ws_url, subprotocols=[PROTOCOL], origin=web.base,  # type: ignore[arg-type]
        additional_headers={"Cookie": session.cookie},
    ) as ws:  # fmt: skip
        hello = json.loads(await ws.recv())
    assert hello["type"] == "hello"
    assert hello["agent_id"] == "alice"
    # Without an Origin the cookie is not enough (only browsers carry cookies by themselves).
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            ws_url, subprotocols=[PROTOCOL], additional_headers={"Cookie": session.cookie}
        ):
            pass
    assert refused.value.response.status_code == 401


async def test_signing_out_ends_the_session_for_every_copy_of_the_cookie(
    web: WebServer,
) -> None:
    session = await signed_in(web)
    async with httpx.AsyncClient(base_url=web.base, timeout=60) as client:
        headers = {"Cookie": session.cookie, "Origin": web.base}
        without_token = await client.delete("/ui/session", headers=headers)
        assert without_token.status_code == 403  # no sign-out forced by another site
        out = await client.delete("/ui/session", headers={**headers, "X-CSRF-Token": session.csrf})
        assert out.status_code == 204
        assert "max-age=0" in out.headers["set-cookie"].lower()
        again = await client.get("/api/v1/me", headers={"Cookie": session.cookie})
        who = await client.get("/ui/session", headers={"Cookie": session.cookie})
    assert again.status_code == 401
    assert who.json() == {"signed_in": False}


async def test_a_replaced_token_ends_the_sessions_opened_with_it(web: WebServer) -> None:
    session = await signed_in(web)
    config = ServerConfig.load(web.data_dir, driver="local")
    async with await Store.open(config.db_path) as store:
        await Agents(store).issue_token("alice", replace=True)  # `projectvm agents token alice`
    async with as_browser(web, session) as page:
        assert (await page.get("/me")).status_code == 401


async def test_the_pages_forbid_framing_and_inline_scripts(web: WebServer) -> None:
    async with httpx.AsyncClient(base_url=web.base, timeout=60) as client:
        for path in ("/", "/ui/projects/prj_x/files", "/ui/assets/js/main.js", "/ui/session"):
            response = await client.get(path)
            assert response.status_code == 200, path
            policy = response.headers["content-security-policy"]
            directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
            assert directives["script-src"] == "'self'", path  # no inline, no eval
            assert directives["frame-ancestors"] == "'none'", path
            assert directives["connect-src"] == "'self'", path
            assert response.headers["x-frame-options"] == "DENY", path
            assert response.headers["x-content-type-options"] == "nosniff", path
        page = (await client.get("/")).text
    assert "<script>" not in page.replace(" ", "")
    assert 'type="module" src="/ui/assets/js/main.js"' in page


async def test_a_foreign_host_is_not_served_the_dashboard(web: WebServer) -> None:
    async with httpx.AsyncClient(base_url=web.base, timeout=60) as client:
        rebound = await client.get("/", headers={"Host": "evil.example"})
        sign_in_rebound = await client.post(
            "/ui/session", json={"token": web.tokens["alice"]}, headers={"Host": "evil.example"}
        )
    assert rebound.status_code == 421
    assert sign_in_rebound.status_code == 421
