"""The HTTP surface's tables and pieces, without a server: every operation has a route, every
error a status of its own branch, the credential hook (with CSRF), hosts and tickets."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

import guest_runtime
import server
import vm_drivers
from guest_runtime.errors import ProjectVMError
from server.core.service import ENDPOINTS
from server.surfaces.http.auth import (
    Authenticate,
    Authenticator,
    BearerTokens,
    Identity,
    identity_of,
)
from server.surfaces.http.hosts import HostPolicy
from server.surfaces.http.problems import STATUS_OF, status_of
from server.surfaces.http.rest.handlers import HANDLERS
from server.surfaces.http.rest.routes import PRIMARY, ROUTES, Body, Style
from server.surfaces.http.ws.tickets import TicketBook
from tests.fakes.fake_session_cookies import FakeSessionCookies


def test_every_operation_has_a_route_whose_path_fields_it_takes() -> None:
    assert set(PRIMARY) == set(ENDPOINTS), "an operation has no REST route"
    for route in ROUTES:
        fields = ENDPOINTS[route.operation].request.model_fields
        assert set(route.path_fields) <= set(fields), route
        if route.body == Body.FIELD:
            assert route.body_field in fields, route
    assert set(HANDLERS) == set(Style)
    assert len({(route.method, route.path) for route in ROUTES}) == len(ROUTES)


def all_error_classes() -> set[type[ProjectVMError]]:
    for package in (guest_runtime, vm_drivers, server):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if "agent" not in module.name and "__main__" not in module.name:
                importlib.import_module(module.name)
    found: set[type[ProjectVMError]] = set()
    pending: list[type[ProjectVMError]] = [ProjectVMError]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending += cls.__subclasses__()
    return found


def test_every_error_of_the_tree_maps_to_a_status_of_its_own_branch() -> None:
    for cls in all_error_classes() - {ProjectVMError}:
        matched = next(base for base in cls.__mro__ if base in STATUS_OF)
        assert matched is not ProjectVMError, f"{cls.__name__} falls through to the catch-all"
    samples: dict[str, int] = {
        "NotFound": 404,
        "AccessDenied": 403,
        "StaleWrite": 412,
        "Conflict": 409,
        "LimitExceeded": 413,
        "GuestUnreachable": 503,
        "PathNotFound": 404,
        "InvalidInput": 422,
        "ProjectNotRunning": 409,
    }
    by_name = {cls.__name__: cls for cls in all_error_classes()}
    for name, status in samples.items():
        assert status_of(by_name[name]("x")) == status, name


async def _echo_identity(scope: Scope, receive: Receive, send: Send) -> None:
    identity = identity_of(scope)
    assert identity is not None
    response = JSONResponse({"agent": identity.agent_id, "via": identity.via})
    await response(scope, receive, send)


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


@pytest.mark.anyio
async def test_a_cookie_session_needs_its_csrf_token_on_changes_but_not_on_reads() -> None:
    async def resolve(token: str) -> str | None:
        return "alice" if token == "pvm_good" else None

    cookies = FakeSessionCookies({"s3ss10n": ("carol", "csrf-123")})
    app = Authenticate(_echo_identity, Authenticator(BearerTokens(resolve), [cookies]))
    session = {"Cookie": "pvm_session=s3ss10n"}
    async with _client(app) as client:
        read = await client.get("/api/v1/me", headers=session)
        assert read.json() == {"agent": "carol", "via": "session"}
        forged = await client.post("/api/v1/projects", headers=session)
        assert forged.status_code == 403
        assert forged.json()["type"].endswith("#csrf-check-failed")
        proper = await client.post(
            "/api/v1/projects", headers={**session, "X-CSRF-Token": "csrf-123"}
        )
        assert proper.json()["via"] == "session"
        bearer = await client.post("/api/v1/x", headers={"Authorization": "Bearer pvm_good"})
        assert bearer.json() == {"agent": "alice", "via": "bearer"}
        unknown = await client.get("/api/v1/me", headers={"Cookie": "pvm_session=other"})
        assert unknown.status_code == 401
        assert unknown.headers["content-type"] == "application/problem+json"
        mcp = await client.post("/mcp")
        assert mcp.status_code == 401
        assert "projectvm agents add" in mcp.json()["message"]


def test_hosts_and_origins_are_our_own_names_on_any_port() -> None:
    hosts = HostPolicy.for_bind("0.0.0.0", ["pvm.internal", "exact.host:8443"])
    assert hosts.allows_host("127.0.0.1:8080")
    assert hosts.allows_host("localhost")
    assert hosts.allows_host("[::1]:9")
    assert hosts.allows_host("pvm.internal:1234")
    assert hosts.allows_host("exact.host:8443")
    assert not hosts.allows_host("exact.host:9999")
    assert not hosts.allows_host("evil.example.com")
    assert not hosts.allows_host(None)
    assert hosts.allows_origin(None)
    assert hosts.allows_origin("http://localhost:3000")
    assert not hosts.allows_origin("https://evil.example.com")
    assert not hosts.allows_origin("http://localhost.evil.example.com")
    assert not hosts.allows_origin("null")


def test_a_ticket_is_single_use_short_lived_and_for_its_project_only() -> None:
    alice, bob = Identity("alice", "bearer"), Identity("bob", "bearer")
    book = TicketBook()
    ticket = book.issue(alice, "prj_1")
    assert book.redeem(ticket, "prj_2") is None
    ticket = book.issue(alice, "prj_1")
    assert book.redeem(ticket, "prj_1") == Identity("alice", "ticket")
    assert book.redeem(ticket, "prj_1") is None
    expired = TicketBook(ttl_s=-1)
    assert expired.redeem(expired.issue(alice), "prj_1") is None
    anywhere = book.issue(bob)
    assert book.redeem(anywhere, "prj_9") == Identity("bob", "ticket")
