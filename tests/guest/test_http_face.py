"""The agent's HTTP face: health, bearer auth, the WebSocket protocol, and one session at a time."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from guest_runtime.bundle import write_agent_zipapp
from guest_runtime.client import GuestClient
from guest_runtime.errors import GuestUnreachable
from tests.conformance.running import LIST_PROCESSES, run
from vm_drivers.streams_ws import WebSocketRejected, connect_websocket

from .http_agent import (
    TOKEN,
    HttpAgent,
    RawWebSocket,
    frame,
    http_agent,
    http_exchange,
    upgrade_request,
)

pytestmark = pytest.mark.anyio

HELLO = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "hello", "params": {}}).encode()


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[HttpAgent]:
    async with http_agent(tmp_path, "--ping-interval", "0") as started:
        yield started


async def connect(agent: HttpAgent) -> GuestClient:
    stream = await connect_websocket(agent.url, headers={"Authorization": f"Bearer {TOKEN}"})
    return GuestClient(stream)


async def test_health_answers_without_a_token_and_says_nothing_more(agent: HttpAgent) -> None:
    status, _, body = await http_exchange(agent.port, b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (status, json.loads(body)) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (upgrade_request(token=None), 401),
        (upgrade_request(token="wrong-" + TOKEN), 401),
        (upgrade_request(token=TOKEN[:-1]), 401),
        (b"GET /rpc HTTP/1.1\r\nAuthorization: Basic " + TOKEN.encode() + b"\r\n\r\n", 401),
        (b"GET /files HTTP/1.1\r\n\r\n", 401),
        (b"GET /files HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n", 404),
        (b"POST /rpc HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n", 405),
        (b"GET /rpc HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n", 426),
        (upgrade_request(version="8"), 426),
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ],
    ids=[
        "no-token",
        "wrong-token",
        "token-prefix",
        "basic-scheme",
        "other-path-without-token",
        "other-path-with-token",
        "post",
        "no-upgrade",
        "old-version",
        "garbage",
        "huge-head",
    ],
)
async def test_every_request_but_health_needs_the_bearer_token(
    agent: HttpAgent, request_bytes: bytes, status: int
) -> None:
    answered, head, body = await http_exchange(agent.port, request_bytes)
    assert answered == status, (head, body)
    if status == 401:
        assert b"WWW-Authenticate: Bearer" in head
        assert b"Bearer <token>" in body


async def test_the_whole_protocol_runs_over_the_websocket(agent: HttpAgent) -> None:
    async with await connect(agent) as client:
        info = await client.hello()
        assert info.root == str(agent.root)
        await client.write_file("notes/a.txt", "héllo\n".encode())
        assert (await client.read_file("notes/a.txt")).data == "héllo\n".encode()
        exit_info, out, err, _ = await run(client, "cat notes/a.txt; echo oops >&2; exit 4")
        assert (exit_info.exit_code, out, err) == (4, "héllo\n".encode(), b"oops\n")
        big = bytes(range(256)) * 20_000  # 5 MB: many frames, one message
        await client.write_file("big.bin", big)
        assert (await client.read_file("big.bin")).data == big


def oldest_python() -> str | None:
    """A Python 3.8 on this machine (PATH or pyenv), the oldest the agent supports."""
    found = sorted(Path.home().glob(".pyenv/versions/3.8*/bin/python3.8"))
    candidates = [shutil.which("python3.8"), *map(str, found)]
    for candidate in candidates:
        if (
            candidate
            and subprocess.run(
                [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 8)"],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        ):
            return candidate
    return None


OLDEST_PYTHON = oldest_python()  # looked up once, at collection


async def test_the_http_face_runs_on_python_3_8(tmp_path: Path) -> None:
    python = OLDEST_PYTHON
    if python is None:
        pytest.skip("no Python 3.8 on this machine to check the agent's oldest supported version")
    async with (
        http_agent(tmp_path, "--ping-interval", "0", python=python) as agent,
        await connect(agent) as client,
    ):
        assert (await client.hello()).python.startswith("3.8")
        exit_info, out, _, _ = await run(client, "echo from 3.8")
        assert (exit_info.exit_code, out) == (0, b"from 3.8\n")


async def test_the_token_is_not_in_the_environment_of_commands(tmp_path: Path) -> None:
    environment = {"AGENT_TOKEN": TOKEN}
    async with (
        http_agent(tmp_path, "--token-env", "AGENT_TOKEN", env=environment) as a,
        await connect(a) as client,
    ):
        await client.hello()
        _, out, _, _ = await run(client, "env")
    assert TOKEN.encode() not in out
    assert b"AGENT_TOKEN" not in out


@pytest.mark.parametrize("token", ["", "short"])
async def test_the_agent_refuses_to_serve_without_a_strong_token(
    tmp_path: Path, token: str
) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "token").write_text(token)
    zipapp = write_agent_zipapp(tmp_path / "agent")
    argv = [sys.executable, str(zipapp), "--root", str(tmp_path / "ws"), "--http", ":0"]
    with anyio.fail_after(30):
        result = await anyio.run_process(
            [*argv, "--token-file", str(tmp_path / "token")],
            check=False,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 2
    assert b"shorter than 16 characters" in result.stderr


async def test_a_new_session_replaces_the_old_one_and_kills_its_commands(
    agent: HttpAgent,
) -> None:
    async with await connect(agent) as first:
        await first.hello()
        handle = await first.start_exec("echo started; exec sleep 300")
        with anyio.fail_after(30):
            async for event in handle.events():
                if getattr(event, "data", b"") == b"started\n":
                    break
        async with await connect(agent) as second:
            await second.hello()
            with pytest.raises(GuestUnreachable), anyio.fail_after(30):
                async for _ in handle.events():
                    pass
            with anyio.fail_after(30):
                await first.wait_closed()
            with anyio.fail_after(30):
                while b"sleep 300" in (await run(second, LIST_PROCESSES))[1]:
                    await anyio.lowlevel.checkpoint()


async def test_the_replaced_session_hears_close_code_4000(agent: HttpAgent) -> None:
    async with RawWebSocket.open(agent.port) as first, await connect(agent) as second:
        await second.hello()
        assert await first.receive_close() == 4000


async def test_a_background_process_outlives_the_session_that_started_it(
    agent: HttpAgent,
) -> None:
    async with await connect(agent) as first:
        await first.hello()
        await run(first, "setsid sh -c 'echo $$ > daemon.pid; exec sleep 300' >/dev/null 2>&1 &")
    async with await connect(agent) as second:
        await second.hello()
        pid = ""
        with anyio.fail_after(30):
            while not pid:
                if (await second.stat("daemon.pid")).exists:
                    pid = (await second.read_file("daemon.pid")).data.decode().strip()
        exit_info, _, _, _ = await run(second, f"kill -0 {pid} && kill {pid}")
        assert exit_info.exit_code == 0


async def test_fragments_with_a_ping_between_them_make_one_message(agent: HttpAgent) -> None:
    async with RawWebSocket.open(agent.port) as websocket:
        half = len(HELLO) // 2
        await websocket.send(frame(0x1, HELLO[:half], fin=False))
        await websocket.send(frame(0x9, b"are you there"))
        await websocket.send(frame(0x0, HELLO[half:]))
        assert await websocket.receive_data_frame() == (0xA, b"are you there")
        opcode, payload = await websocket.receive_data_frame()
        assert opcode == 0x1
        answer = json.loads(payload)
        assert answer["id"] == 7
        assert answer["result"]["protocol_version"] == 1


async def test_a_binary_message_is_a_request_too(agent: HttpAgent) -> None:
    async with RawWebSocket.open(agent.port) as websocket:
        await websocket.send(frame(0x2, HELLO))
        opcode, payload = await websocket.receive_data_frame()
        assert opcode == 0x1
        assert json.loads(payload)["id"] == 7


async def test_a_closing_handshake_is_answered_with_the_same_code(agent: HttpAgent) -> None:
    async with RawWebSocket.open(agent.port) as websocket:
        await websocket.send(frame(0x8, struct.pack(">H", 1000) + b"bye"))
        assert await websocket.receive_close() == 1000


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([frame(0x1, HELLO, masked=False)], 1002),
        ([frame(0x0, HELLO)], 1002),
        ([frame(0x1, HELLO[:5], fin=False), frame(0x1, HELLO[5:])], 1002),
        ([frame(0x9, b"x" * 126)], 1002),
        ([frame(0x9, b"p", fin=False)], 1002),
        ([frame(0x3, b"")], 1002),
        ([bytes([0xC1, 0x80]) + b"\0\0\0\0"], 1002),
        ([frame(0x1, b"\xff\xfe not utf-8")], 1007),
        ([frame(0x8, struct.pack(">H", 1005))], 1002),
        ([frame(0x8, b"\x03")], 1002),
    ],
    ids=[
        "unmasked",
        "continuation-of-nothing",
        "message-inside-fragments",
        "long-ping",
        "fragmented-ping",
        "unknown-opcode",
        "reserved-bits",
        "invalid-utf8",
        "reserved-close-code",
        "one-byte-close",
    ],
)
async def test_protocol_violations_close_the_session_with_the_right_code(
    agent: HttpAgent, frames: list[bytes], code: int
) -> None:
    async with RawWebSocket.open(agent.port) as websocket:
        for data in frames:
            await websocket.send(data)
        assert await websocket.receive_close() == code


async def test_a_message_over_the_size_cap_closes_with_1009(tmp_path: Path) -> None:
    async with http_agent(tmp_path, "--max-line-bytes", "4096", "--ping-interval", "0") as a:
        async with RawWebSocket.open(a.port) as websocket:
            await websocket.send(frame(0x1, b"x" * 3000, fin=False))
            await websocket.send(frame(0x0, b"x" * 3000))
            assert await websocket.receive_close() == 1009
        async with await connect(a) as client:  # the agent itself is fine
            assert (await client.hello()).protocol_version == 1


async def test_keep_alive_pings_arrive_and_are_answered(tmp_path: Path) -> None:
    async with (
        http_agent(tmp_path, "--ping-interval", "0.05") as a,
        RawWebSocket.open(a.port) as websocket,
    ):
        opcode, payload = await websocket.receive_frame()
        assert (opcode, payload) == (0x9, b"keepalive")
        await websocket.send(frame(0xA, payload))
        await websocket.send(frame(0x1, HELLO))
        opcode, payload = await websocket.receive_data_frame()
        assert json.loads(payload)["id"] == 7


async def test_the_host_stream_reports_a_refused_upgrade_with_its_status(agent: HttpAgent) -> None:
    with pytest.raises(WebSocketRejected) as refused:
        await connect_websocket(agent.url, headers={"Authorization": "Bearer wrong"})
    assert refused.value.status_code == 401
    assert "bearer token" in str(refused.value)
    with pytest.raises(GuestUnreachable):
        await connect_websocket("ws://127.0.0.1:1/rpc", timeout=5)
