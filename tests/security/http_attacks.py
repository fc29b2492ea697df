"""What the HTTP-surface attacks share: a real server process with agents, and a meter of how
long the server's event loop stalls while an attack runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx

from server.store import Store
from tests.helpers import issue_token
from tests.servers import serve_process

__all__ = ["LiveServer", "StallMeter", "live_server"]


@dataclass(frozen=True)
class LiveServer:
    base: str  # http://127.0.0.1:PORT
    pid: int
    tokens: dict[str, str]

    @property
    def api(self) -> str:
        return self.base + "/api/v1"

    @property
    def mcp(self) -> str:
        return self.base + "/mcp"

    def ws_url(self, project_id: str) -> str:
        return self.base.replace("http://", "ws://") + f"/api/v1/projects/{project_id}/ws"

    def rest(self, agent: str, **options: object) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[agent]}"}
        settings: dict[str, object] = {"timeout": 60, **options}
        return httpx.AsyncClient(base_url=self.api, headers=headers, **settings)  # type: ignore[arg-type]


@asynccontextmanager
async def live_server(
    data_dir: Path,
    agents: tuple[str, ...] = ("alice", "bob"),
    *,
    driver: str = "process",
    config: str = "",
) -> AsyncIterator[LiveServer]:
    """``projectvm serve --http`` as a process on a free port, with a token per agent and
    ``config`` as its config.toml."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if config:
        (data_dir / "config.toml").write_text(config)
    async with await Store.open(data_dir / "projectvm.db") as store:
        tokens = {agent: await issue_token(store, agent) for agent in agents}
    async with serve_process(data_dir, driver=driver) as (process, url):
        yield LiveServer(url.removesuffix("/mcp"), process.pid, tokens)


@dataclass
class StallMeter:
    """``/healthz`` asked over and over (each a real round trip) while a block runs: the
    longest answer is how long the server's event loop was blocked, at least."""

    base: str
    latencies: list[float] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)

    @asynccontextmanager
    async def measuring(self) -> AsyncIterator[StallMeter]:
        async with (
            httpx.AsyncClient(base_url=self.base, timeout=120) as client,
            anyio.create_task_group() as group,
        ):

            async def probe() -> None:
                while True:
                    started = anyio.current_time()
                    await client.get("/healthz")
                    self.latencies.append(anyio.current_time() - started)

            group.start_soon(probe)
            try:
                yield self
            finally:
                group.cancel_scope.cancel()
