"""Raw uploads and downloads stream: a file near max_file_bytes goes up and comes back whole
through a real server process whose memory stays bounded; nothing half-written is ever
visible at the file's path, and a failed or refused upload leaves nothing behind."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from server.domain.config import ServerConfig
from tests.rest.conftest import make_tokens
from tests.servers import peak_rss_kib, serve_process

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024
MAX_FILE = 64 * MIB
SIZE = MAX_FILE - MIB  # near the limit
BLOCK = MIB


def block(number: int) -> bytes:
    """Deterministic, incompressible-looking content, made as it is sent."""
    seed = hashlib.sha256(number.to_bytes(4, "big")).digest()
    return (seed * (BLOCK // len(seed) + 1))[:BLOCK]


async def body(blocks: int, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for number in range(blocks):
        if fail_after is not None and number == fail_after:
            raise ConnectionAbortedError("the uploader gave up")
        yield block(number)


def expected_sha(blocks: int) -> str:
    digest = hashlib.sha256()
    for number in range(blocks):
        digest.update(block(number))
    return digest.hexdigest()


@pytest.fixture
async def big_server(data_dir: Path, requires_bwrap: None) -> AsyncIterator[tuple[str, int, str]]:
    """A `projectvm serve --http` process with max_file_bytes of 64 MiB: (API URL, pid, token)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "config.toml").write_text(f"[limits]\nmax_file_bytes = {MAX_FILE}\n")
    tokens = await make_tokens(ServerConfig.load(data_dir, driver="local"))
    async with serve_process(data_dir) as (process, url):
        yield url.removesuffix("/mcp") + "/api/v1", process.pid, tokens["alice"]


async def test_a_file_near_max_file_bytes_streams_up_and_down_with_the_servers_memory_bounded(
    big_server: tuple[str, int, str],
) -> None:
    base, pid, token = big_server
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=300) as client:
        project_id = (await client.post("/projects", json={"name": "big"})).json()["project_id"]
        url = f"/projects/{project_id}/files/big.bin"
        try:
            # Warm up every path once (an upload in pieces, a ranged download) before measuring.
            await client.put(f"/projects/{project_id}/files/warm.bin", content=body(9))
            await client.get(f"/projects/{project_id}/files/warm.bin")
            baseline = peak_rss_kib(pid)
            blocks = SIZE // BLOCK
            seen_while_uploading: list[int] = []

            async def watch() -> None:
                """The path shows nothing, or the whole file: never a part of it (the pieces
                gather under another, hidden name)."""
                while True:
                    tree = await client.get(f"/projects/{project_id}/tree")
                    sizes = {e["path"]: e["size"] for e in tree.json()["entries"]}
                    seen_while_uploading.append(sizes.get("big.bin", 0))
                    if "big.bin" in sizes:
                        assert sizes["big.bin"] == SIZE
                        return
                    await anyio.lowlevel.checkpoint()

            async with anyio.create_task_group() as group:
                group.start_soon(watch)
                uploaded = await client.put(url, content=body(blocks))
            assert uploaded.status_code == 201, uploaded.text
            assert uploaded.json()["sha256"] == expected_sha(blocks)
            assert uploaded.json()["size"] == SIZE
            assert 0 in seen_while_uploading  # it was watched while the upload ran
            digest, size = hashlib.sha256(), 0
            async with client.stream("GET", url) as download:
                assert download.headers["etag"] == f'"{expected_sha(blocks)}"'
                assert int(download.headers["content-length"]) == SIZE
                async for chunk in download.aiter_bytes():
                    digest.update(chunk)
                    size += len(chunk)
            growth_mib = (peak_rss_kib(pid) - baseline) / 1024
            print(f"server peak RSS grew {growth_mib:.1f} MiB for a {SIZE // MIB} MiB file")
            assert size == SIZE
            assert digest.hexdigest() == expected_sha(blocks)
            assert growth_mib < SIZE / MIB / 2, f"peak memory grew by {growth_mib:.1f} MiB"
            too_big = await client.put(f"/projects/{project_id}/files/huge.bin", content=body(65))
            assert too_big.status_code == 413
            assert "larger than 67108864 bytes" in too_big.json()["detail"]
        finally:
            await client.delete(f"/projects/{project_id}")


async def test_a_failed_or_refused_upload_leaves_nothing_behind(
    big_server: tuple[str, int, str],
) -> None:
    base, _, token = big_server
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=300) as client:
        project_id = (await client.post("/projects", json={"name": "fail"})).json()["project_id"]
        try:
            url = f"/projects/{project_id}/files/doc.bin"
            with pytest.raises(ConnectionAbortedError):
                await client.put(url, content=body(12, fail_after=7))
            first = await client.put(url, content=body(6))
            assert first.status_code == 201
            stale = await client.put(url, content=body(10), headers={"If-Match": '"0000"'})
            assert stale.status_code == 412
            assert stale.json()["current_sha256"] == first.json()["sha256"]
            exists = await client.put(url, content=body(10), headers={"If-None-Match": "*"})
            assert exists.status_code == 412

            async def only_the_first_upload_is_there() -> bool:
                tree = await client.get(
                    f"/projects/{project_id}/tree", params={"include_hidden": "true"}
                )
                return [entry["path"] for entry in tree.json()["entries"]] == ["doc.bin"]

            with anyio.fail_after(30):  # the aborted upload is cleaned up as its request ends
                while not await only_the_first_upload_is_there():
                    await anyio.lowlevel.checkpoint()
            kept = await client.get(url, headers={"Accept": "application/json"})
            assert kept.json()["sha256"] == first.json()["sha256"]
            replaced = await client.put(
                url, content=body(10), headers={"If-Match": first.headers["etag"]}
            )
            assert replaced.status_code == 200
            assert replaced.json()["sha256"] == expected_sha(10)
        finally:
            await client.delete(f"/projects/{project_id}")
