"""The dashboard against a real server process (local driver), in a real browser.

``web`` is a ``projectvm serve --http`` process with agents ``alice``, ``bob`` and ``carol``;
``browser`` is Debian's Chromium (``/usr/bin/chromium``, headless) driven by Playwright (its
own browsers are never downloaded). Screenshots go to the directory that
:func:`artifacts` prints (``PROJECTVM_WEB_ARTIFACTS``, else under pytest's basetemp).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.domain.config import ServerConfig
from server.store import Store
from tests.helpers import issue_token
from tests.servers import serve_process

CHROMIUM = Path(os.environ.get("PROJECTVM_CHROMIUM", "/usr/bin/chromium"))
AGENTS = ("alice", "bob", "carol")
ARTIFACTS_ENV = "PROJECTVM_WEB_ARTIFACTS"
_artifact_dirs: list[Path] = []


@dataclass(frozen=True)
class WebServer:
    base: str  # http://127.0.0.1:PORT
    tokens: dict[str, str]
    data_dir: Path

    @property
    def mcp_url(self) -> str:
        return self.base + "/mcp"

    def rest(self, agent: str) -> httpx.AsyncClient:
        """The REST API as ``agent`` with its bearer token (to set up and to check)."""
        headers = {"Authorization": f"Bearer {self.tokens[agent]}"}
        return httpx.AsyncClient(base_url=self.base + "/api/v1", headers=headers, timeout=60)

    async def project(self, name: str, members: dict[str, str] | None = None) -> str:
        """A project made by alice, with ``members`` (agent -> level)."""
        async with self.rest("alice") as alice:
            created = await alice.post("/projects", json={"name": name})
            assert created.status_code == 201, created.text
            project_id = str(created.json()["project_id"])
            for agent, level in (members or {}).items():
                added = await alice.put(
                    f"/projects/{project_id}/members/{agent}", json={"access_level": level}
                )
                assert added.status_code == 200, added.text
        return project_id


@pytest.fixture
async def web(data_dir: Path, requires_bwrap: None) -> AsyncIterator[WebServer]:
    config = ServerConfig.load(data_dir, driver="local")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    async with await Store.open(config.db_path) as store:
        tokens = {name: await issue_token(store, name) for name in AGENTS}
    async with serve_process(data_dir, driver="local") as (_, url):
        server = WebServer(url.removesuffix("/mcp"), tokens, data_dir)
        try:
            yield server
        finally:  # every project made in the test goes, with its sandbox
            async with server.rest("alice") as alice:
                listed = await alice.get("/projects")
                for project in listed.json().get("projects", []):
                    await alice.delete(f"/projects/{project['project_id']}")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go; printed at the end of the run."""
    chosen = os.environ.get(ARTIFACTS_ENV)
    folder = Path(chosen) if chosen else tmp_path_factory.getbasetemp() / "web-artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    _artifact_dirs.append(folder)
    return folder


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for folder in _artifact_dirs:
        shots = sorted(p.name for p in folder.glob("*.png"))
        if shots:
            terminalreporter.write_line(f"dashboard screenshots ({len(shots)}): {folder}")


@pytest.fixture
def chromium_path() -> Path:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(
            f"no Chromium at {CHROMIUM} (scripts/test.sh installs Debian's: apt-get install "
            "chromium); set PROJECTVM_CHROMIUM to use another"
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium_path: Path) -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install -e '.[dev]')")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium_path), headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Console:
    """What the page's scripts reported: errors and CSP violations fail a test."""

    messages: list[str] = field(default_factory=list)

    def problems(self, *allowed: str) -> list[str]:
        return [m for m in self.messages if not any(a in m for a in allowed)]


@pytest.fixture
def console() -> Console:
    return Console()
