"""The dashboard without a server: its session table, its cookie, its files (shipped in the
package, nothing from elsewhere, the vendored ones as recorded) and how they are served."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path

import httpx
import pytest
from starlette.datastructures import Headers

from server.core.agents import hash_token
from server.surfaces.http.auth import BearerTokens
from server.surfaces.http.dashboard.app import Dashboard
from server.surfaces.http.dashboard.assets import read_static
from server.surfaces.http.dashboard.sessions import (
    SessionBook,
    SessionCookies,
    session_cookie,
)
from server.surfaces.http.hosts import HostPolicy

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "server/surfaces/http/dashboard/static"
OWN_FILES = [
    path
    for path in STATIC.rglob("*")
    if path.is_file() and "vendor" not in path.parts and path.suffix in (".js", ".html", ".css")
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_ends_after_its_idle_time_and_using_it_restarts_that_time() -> None:
    clock = FakeClock()
    book = SessionBook(idle_s=60, lifetime_s=3600, clock=clock)
    session_id, _ = book.open("alice", "hash")
    clock.now += 59
    assert book.find(session_id) is not None  # used: idle time starts again
    clock.now += 59
    assert book.find(session_id) is not None
    clock.now += 60
    assert book.find(session_id) is None
    assert len(book) == 0


def test_a_session_ends_at_its_lifetime_however_busy_it_is() -> None:
    clock = FakeClock()
    book = SessionBook(idle_s=60, lifetime_s=100, clock=clock)
    session_id, session = book.open("alice", "hash")
    for _ in range(3):
        clock.now += 30
        assert book.find(session_id) is not None
    assert book.expires_in(session) == pytest.approx(10)
    clock.now += 10
    assert book.find(session_id) is None


def test_closing_a_session_makes_its_cookie_worthless() -> None:
    book = SessionBook()
    session_id, _ = book.open("alice", "hash")
    assert book.close(session_id)
    assert book.find(session_id) is None
    assert not book.close(session_id)
    assert book.find("") is None


def test_a_flood_of_sign_ins_drops_the_stalest_session_not_the_table() -> None:
    clock = FakeClock()
    book = SessionBook(max_sessions=3, clock=clock)
    ids = []
    for _ in range(3):
        ids.append(book.open("alice", "hash")[0])
        clock.now += 1
    book.find(ids[0])  # the oldest is used, so the second is the stalest
    book.open("bob", "hash")
    assert len(book) == 3
    assert book.find(ids[1]) is None
    assert book.find(ids[0]) is not None


def test_the_table_keeps_no_cookie_value_and_no_token() -> None:
    book = SessionBook()
    session_id, session = book.open("alice", hash_token("pvm_secret"))
    kept = repr(book.__dict__)
    assert session_id not in kept
    assert "pvm_secret" not in kept
    assert session.csrf_token != session_id


@pytest.mark.anyio
async def test_the_cookie_stands_for_its_agent_only_while_the_token_is_still_theirs() -> None:
    current = {"alice": hash_token("pvm_first")}

    async def resolve_hash(token_hash: str) -> str | None:
        return next((agent for agent, h in current.items() if h == token_hash), None)

    cookies = SessionCookies(SessionBook(), resolve_hash)
    session_id, session = cookies.book.open("alice", hash_token("pvm_first"))
    headers = Headers({"cookie": f"other=1; pvm_session={session_id}"})
    identity = await cookies.identify(headers)
    assert identity is not None
    assert identity.agent_id == "alice"
    assert identity.via == "session"
    assert identity.csrf_check is not None
    assert identity.csrf_check(Headers({"x-csrf-token": session.csrf_token}))
    assert not identity.csrf_check(Headers({"x-csrf-token": session.csrf_token + "x"}))
    assert not identity.csrf_check(Headers({}))

    current["alice"] = hash_token("pvm_second")  # `projectvm agents token alice`
    assert await cookies.identify(headers) is None
    current["alice"] = hash_token("pvm_first")
    assert await cookies.identify(headers) is None  # the session ended for good
    assert await cookies.identify(Headers({"cookie": "pvm_session=made-up"})) is None


def test_the_cookie_is_httponly_samesite_strict_for_the_whole_site() -> None:
    value = session_cookie("abc", max_age_s=60, secure=False)
    parts = [part.strip() for part in value.split(";")]
    assert parts[0] == "pvm_session=abc"
    assert {"Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=60"} <= set(parts)
    assert "Secure" not in parts
    assert "Secure" in session_cookie("abc", max_age_s=60, secure=True)
    assert "Max-Age=0" in session_cookie("", max_age_s=0, secure=False)


def test_every_module_the_pages_import_is_shipped() -> None:
    shipped = set(read_static())
    for path in STATIC.rglob("*.js"):
        source = path.read_text()
        wanted = re.findall(r'^import .*? from "([^"]+)";', source, re.MULTILINE)
        wanted += re.findall(r'import\("([^"]+)"\)', source)
        for target in wanted:
            if target.startswith("/ui/assets/"):
                resolved = target.removeprefix("/ui/assets/")
            else:
                resolved = (path.parent / target).resolve().relative_to(STATIC).as_posix()
            assert resolved in shipped, f"{path.name} imports {target}, which is not shipped"
    page = (STATIC / "index.html").read_text()
    for target in re.findall(r'(?:src|href)="/ui/assets/([^"]+)"', page):
        assert target in shipped, f"index.html loads {target}, which is not shipped"


def test_the_pages_load_nothing_from_elsewhere_and_run_no_inline_script() -> None:
    assert OWN_FILES
    for path in OWN_FILES:
        text = path.read_text()
        assert not re.search(r"https?://", text), f"{path.name} names another site"
    page = (STATIC / "index.html").read_text()
    assert re.findall(r"<script[^>]*>", page) == [
        '<script type="module" src="/ui/assets/js/main.js">'
    ]
    for path in OWN_FILES:  # no inline event handlers either
        assert not re.search(r"<[^>]+ on[a-z]+=", path.read_text()), path.name


def test_the_vendored_files_are_the_ones_recorded_with_their_versions() -> None:
    record = json.loads((STATIC / "vendor/VENDORED.json").read_text())
    assert record["packages"]["@xterm/xterm"]["version"]
    assert record["packages"]["@xterm/addon-fit"]["version"]
    for package in record["packages"].values():
        assert package["integrity"].startswith("sha512-")
        folder = STATIC / "vendor" / package["dir"]
        assert "LICENSE" in package["files"]
        on_disk = {p.name for p in folder.iterdir() if p.is_file()}
        assert on_disk == set(package["files"])
        for name, sha256 in package["files"].items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha256, name


def test_the_package_data_covers_every_dashboard_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["server"]
    covered = {p for pattern in patterns for p in (ROOT / "server").glob(pattern) if p.is_file()}
    shipped = {p for p in STATIC.rglob("*") if p.is_file()}
    assert shipped
    assert shipped <= covered


def _dashboard() -> Dashboard:
    async def no_agent(_: str) -> str | None:
        return None

    cookies = SessionCookies(SessionBook(), no_agent)
    return Dashboard(cookies, BearerTokens(no_agent), HostPolicy.for_bind("127.0.0.1"))


async def _client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=_dashboard())
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000")


@pytest.mark.anyio
async def test_files_are_served_compressed_with_an_etag_and_revalidated_with_304() -> None:
    async with await _client() as client:
        plain = await client.get("/ui/assets/js/main.js", headers={"Accept-Encoding": "identity"})
        packed = await client.get("/ui/assets/js/main.js", headers={"Accept-Encoding": "gzip"})
        again = await client.get(
            "/ui/assets/js/main.js", headers={"If-None-Match": plain.headers["etag"]}
        )
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/javascript")
    assert packed.headers["content-encoding"] == "gzip"
    assert int(packed.headers["content-length"]) < len(plain.content)
    assert packed.content == plain.content  # httpx undoes the gzip
    assert again.status_code == 304


@pytest.mark.anyio
async def test_every_dashboard_path_is_the_page_and_unknown_files_are_404() -> None:
    async with await _client() as client:
        root = await client.get("/")
        deep = await client.get("/ui/projects/prj_x/files")
        missing = await client.get("/ui/assets/js/nothing.js")
        changed = await client.post("/ui/projects")
    assert root.text == deep.text
    assert '<main id="main"' in root.text
    assert missing.status_code == 404
    assert changed.status_code == 405


@pytest.mark.anyio
async def test_signing_in_wants_json_with_a_token_from_our_own_pages() -> None:
    async with await _client() as client:
        unknown = await client.post("/ui/session", json={"token": "pvm_unknown"})
        empty = await client.post("/ui/session", json={})
        not_json = await client.post("/ui/session", content=b"token=x")
        huge = await client.post("/ui/session", json={"token": "x" * 10_000})
        foreign = await client.post(
            "/ui/session", json={"token": "pvm_x"}, headers={"Origin": "https://evil.example"}
        )
        who = await client.get("/ui/session")
    assert unknown.status_code == 401
    assert empty.status_code == 422
    assert not_json.status_code == 415
    assert huge.status_code == 413
    assert foreign.status_code == 403
    assert who.json() == {"signed_in": False}
    assert "set-cookie" not in unknown.headers
