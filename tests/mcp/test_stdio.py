"""`projectvm serve` as a stdio subprocess, driven by the SDK's stdio client."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from tests.helpers import call
from tests.servers import peak_rss_kib, processes_with, stdio_params

pytestmark = pytest.mark.anyio


async def test_files_agree_persist_across_stop_start_and_a_server_restart(
    data_dir: Path, requires_bwrap: None
) -> None:
    async with Client(stdio_params(data_dir)) as client:
        project = await call(client, "create_project", name="over stdio")
        project_id = project["project_id"]
        written = await call(
            client, "write_file", project_id=project_id, path="notes.txt", content="persist me\n"
        )
        ran = await call(client, "run_command", project_id=project_id, command="cat notes.txt")
        read = await call(client, "read_file", project_id=project_id, path="notes.txt")
        assert ran["stdout"] == read["content"] == "persist me\n"
        assert read["sha256"] == written["sha256"]
        on_host = Path(project["workspace_path"]) / "notes.txt"
        assert on_host.read_text() == "persist me\n"
        await call(client, "stop_project", project_id=project_id)
        await call(client, "start_project", project_id=project_id)
        again = await call(client, "read_file", project_id=project_id, path="notes.txt")
        assert again["content"] == "persist me\n"
    assert processes_with(str(data_dir)) == []  # the server and its sandboxes are gone

    async with Client(stdio_params(data_dir)) as client:
        listed = await call(client, "list_projects")
        assert [p["project_id"] for p in listed["projects"]] == [project_id]
        after = await call(client, "read_file", project_id=project_id, path="notes.txt")
        assert after["content"] == "persist me\n"
        ran = await call(client, "run_command", project_id=project_id, command="cat notes.txt")
        assert ran["stdout"] == "persist me\n"
        history = await call(client, "get_execution_history", project_id=project_id)
        assert len(history["executions"]) == 2


async def test_fifty_megabytes_of_output_are_capped_and_server_memory_stays_bounded(
    data_dir: Path, requires_bwrap: None
) -> None:
    async with Client(stdio_params(data_dir)) as client:
        project_id = (await call(client, "create_project", name="flood"))["project_id"]
        await call(client, "run_command", project_id=project_id, command="echo warm-up")
        [server_pid] = [
            pid
            for pid in processes_with(str(data_dir))
            if "server.cli" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        ]
        baseline = peak_rss_kib(server_pid)
        result = await call(
            client,
            "run_command",
            project_id=project_id,
            command="head -c 52428800 /dev/urandom | base64 -w 1000; echo LAST-LINE",
        )
        growth_mib = (peak_rss_kib(server_pid) - baseline) / 1024
        print(f"server peak RSS {baseline / 1024:.1f} MiB before, grew {growth_mib:.1f} MiB")
    assert result["truncated"] is True
    assert result["exit_code"] == 0
    assert result["stdout"].rstrip().endswith("LAST-LINE")
    assert "bytes of output omitted" in result["stdout"]
    assert len(result["stdout"]) < 2 * 1024 * 1024
    assert growth_mib < 40, f"server peak memory grew by {growth_mib:.1f} MiB"
