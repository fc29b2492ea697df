"""fake-firecracker: Firecracker's API and vsock socket on the host, with no VM behind them.

A stand-in for hosts where KVM cannot run a guest (like this one): it serves the API calls the
driver makes on ``--api-sock`` (same paths, same 204/400 and ``fault_message`` shapes, the same
pre-boot checks on files as Firecracker 1.12), and after InstanceStart it listens on the vsock
``uds_path``: each ``CONNECT 52`` gets ``OK <n>`` and a fresh guest agent subprocess serving
that connection (``python3 agent.pyz --root <workspace>``), where the workspace is a directory
next to the data disk (``<path_on_host>.fake-workspace``) — the disk itself is never mounted.
Like the real guest's init, it ends (status 0) once an agent was asked to ``system.shutdown``,
and on ``SendCtrlAltDel``. Snapshots write the configuration as the state file.

Run as ``fake-firecracker --api-sock PATH --id ID``; the agent zipapp and python come from
``FAKE_FIRECRACKER_AGENT`` / ``FAKE_FIRECRACKER_PYTHON`` in its environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any

VERSION = "1.12.1"
AGENT = os.environ.get("FAKE_FIRECRACKER_AGENT", "")
PYTHON = os.environ.get("FAKE_FIRECRACKER_PYTHON", sys.executable)
PRE_BOOT_ONLY = "The requested operation is not supported after starting the microVM."


class Fault(Exception):
    pass


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


class FakeFirecracker:
    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.state = "Not started"
        self.config: dict[str, Any] = {"drives": [], "network-interfaces": []}
        self.vsock_server: asyncio.AbstractServer | None = None
        self.shutting_down = False
        self.done = asyncio.Event()

    # -- API ------------------------------------------------------------------------------

    async def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/version":
            return 200, {"firecracker_version": VERSION}
        if method == "GET" and path == "/":
            return 200, {
                "id": self.instance_id,
                "state": self.state,
                "vmm_version": VERSION,
                "app_name": "Firecracker",
            }
        if method == "GET" and path == "/vm/config":
            return 200, self.config
        if method == "PUT" and path == "/actions":
            return await self.action(body["action_type"])
        if method == "PATCH" and path == "/vm":
            if self.state == "Not started":
                raise Fault("Operation not allowed pre-boot.")
            self.state = "Paused" if body["state"] == "Paused" else "Running"
            return 204, None
        if method == "PUT" and path == "/snapshot/create":
            if self.state != "Paused":
                raise Fault("Cannot create snapshot: the microVM is not paused.")
            _write(body["snapshot_path"], json.dumps(self.config).encode())
            _write(body["mem_file_path"], b"fake guest memory")
            return 204, None
        if method == "PUT" and path == "/snapshot/load":
            return await self.load(body)
        if method == "PUT":
            if self.state != "Not started":
                raise Fault(PRE_BOOT_ONLY)
            self.configure(path, body)
            return 204, None
        raise Fault(f"Invalid request method and/or path: {method} {path.strip('/')}.")

    def configure(self, path: str, body: dict[str, Any]) -> None:
        resource, _, item = path.strip("/").partition("/")
        for key in ("log_path", "kernel_image_path", "initrd_path", "path_on_host"):
            if key in body and not os.path.exists(body[key]):
                raise Fault(f"{key}: No such file or directory (os error 2)")
        if resource == "drives":
            self.config["drives"] = [d for d in self.config["drives"] if d["drive_id"] != item]
            self.config["drives"].append(body)
        elif resource == "network-interfaces":
            self.config["network-interfaces"].append(body)
        elif resource in ("logger", "metrics"):
            pass  # not shown by GET /vm/config, as in Firecracker
        elif resource in ("machine-config", "boot-source", "vsock", "entropy"):
            if resource == "vsock" and os.path.exists(body["uds_path"]):
                raise Fault("Error binding vsock UDS: Address in use (os error 98)")
            self.config[resource] = body
        else:
            raise Fault(f"Invalid request method and/or path: PUT {resource}.")

    async def action(self, kind: str) -> tuple[int, Any]:
        if kind == "InstanceStart":
            if self.state != "Not started":
                raise Fault(PRE_BOOT_ONLY)
            await self.listen(self.config["vsock"]["uds_path"])
            self.state = "Running"
        elif kind == "SendCtrlAltDel":
            asyncio.get_running_loop().call_later(0.05, self.done.set)
        return 204, None

    async def load(self, body: dict[str, Any]) -> tuple[int, Any]:
        if self.state != "Not started" or "vsock" in self.config:
            raise Fault(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources."
            )
        self.config = json.loads(_read(body["snapshot_path"]))
        override = body.get("vsock_override")
        await self.listen(override["uds_path"] if override else self.config["vsock"]["uds_path"])
        self.state = "Running" if body.get("resume_vm") else "Paused"
        return 204, None

    async def serve_api(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode().split(" ", 2)
                length = 0
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode().partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = json.loads(await reader.readexactly(length)) if length else None
                try:
                    status, answer = await self.route(method, path, body)
                except Fault as fault:
                    status, answer = 400, {"fault_message": str(fault)}
                payload = json.dumps(answer).encode() if answer is not None else b""
                reason = {200: "OK", 204: "No Content", 400: "Bad Request"}[status]
                head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(payload)}\r\n"
                if payload:
                    head += "Content-Type: application/json\r\n"
                writer.write(head.encode() + b"\r\n" + payload)
                await writer.drain()

    # -- the "guest" ------------------------------------------------------------------------

    async def listen(self, uds_path: str) -> None:
        self.vsock_server = await asyncio.start_unix_server(self.serve_vsock, uds_path)

    def workspace(self) -> str:
        data = next(d for d in self.config["drives"] if not d["is_read_only"])
        root = data["path_on_host"] + ".fake-workspace"
        os.makedirs(root, exist_ok=True)
        return root

    async def serve_vsock(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if line != b"CONNECT 52\n" or self.state != "Running":
            writer.close()  # nobody listens on that port: Firecracker closes the connection
            return
        root = self.workspace()
        agent = await asyncio.create_subprocess_exec(
            PYTHON,
            AGENT,
            "--root",
            root,
            cwd=root,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "HOME": root},
        )
        writer.write(b"OK 1073741824\n")
        assert agent.stdin is not None
        assert agent.stdout is not None
        asked_to_stop = False

        async def to_agent() -> None:
            nonlocal asked_to_stop
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                while data := await reader.read(65536):
                    asked_to_stop = asked_to_stop or b'"system.shutdown"' in data
                    agent.stdin.write(data)
                    await agent.stdin.drain()
            agent.stdin.close()  # the host went away: the agent ends its session

        async def from_agent() -> None:
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                while data := await agent.stdout.read(65536):
                    writer.write(data)
                    await writer.drain()

        inbound = asyncio.ensure_future(to_agent())
        await from_agent()  # until the agent ends (host EOF, or shutdown)
        inbound.cancel()
        with contextlib.suppress(ProcessLookupError):
            agent.kill()
        await agent.wait()
        writer.close()
        if asked_to_stop:  # the guest's init flushes, unmounts and reboots: the VMM exits
            self.done.set()


async def main() -> int:
    arguments = sys.argv[1:]
    socket_path = arguments[arguments.index("--api-sock") + 1]
    instance_id = arguments[arguments.index("--id") + 1] if "--id" in arguments else "anonymous"
    fake = FakeFirecracker(instance_id)
    server = await asyncio.start_unix_server(fake.serve_api, socket_path)
    print(f"fake-firecracker v{VERSION} listening on {socket_path}", flush=True)
    await fake.done.wait()
    server.close()
    if fake.vsock_server is not None:
        fake.vsock_server.close()
    return 0


if __name__ == "__main__":
    if "--version" in sys.argv:
        print(f"Firecracker v{VERSION}")
        sys.exit(0)
    sys.exit(asyncio.run(main()))
