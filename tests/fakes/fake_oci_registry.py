"""``FakeOCIRegistry``: the push half of the OCI distribution API, with Docker's token auth.

``GET /v2/`` and everything under it answer 401 with a ``Bearer`` challenge until the client
fetches a token from ``/token`` with the right Basic credentials. Blob uploads are checked
against their digest; a manifest is refused while a blob it names is missing (as registries
do). Served on localhost with uvicorn, or in-process with ``transport()``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["FakeOCIRegistry"]

_BLOB = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
_UPLOADS = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<upload>[0-9a-f]*)$")
_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$")


def _error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"errors": [{"code": code, "message": message}]}, status_code=status)


@dataclass
class FakeOCIRegistry:
    username: str = "x"
    password: str = "registry-password-for-tests"
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (repo, ref) -> body
    uploads: dict[str, bytearray] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    base_url: str = ""

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self._endpoint,
                    methods=["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE"],
                )
            ]
        )

    def transport(self) -> httpx.ASGITransport:
        return httpx.ASGITransport(app=self.app)

    async def serve(self, task_group: anyio.abc.TaskGroup) -> tuple[str, uvicorn.Server]:
        """Serve on a loopback port; return ``host:port`` and the server (set should_exit)."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        task_group.start_soon(server.serve, [sock])
        host, port = sock.getsockname()[:2]
        self.base_url = f"http://{host}:{port}"
        return f"{host}:{port}", server

    def manifest(self, repository: str, reference: str) -> dict[str, Any]:
        return dict(json.loads(self.manifests[(repository, reference)]))

    # -- requests -------------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme == "Bearer" and token in self.tokens

    def _challenge(self, request: Request) -> Response:
        realm = f"{request.base_url}token"
        header = f'Bearer realm="{realm}",service="fake-registry"'
        response = _error(401, "UNAUTHORIZED", "authentication required")
        response.headers["WWW-Authenticate"] = header
        return response

    async def _endpoint(self, request: Request) -> Response:
        path = request.url.path
        self.requests.append((request.method, path))
        if path == "/token":
            return self._token(request)
        if not path.startswith("/v2/"):
            return _error(404, "NOT_FOUND", path)
        if not self._authorized(request):
            return self._challenge(request)
        if path == "/v2/":
            return JSONResponse({})
        if found := _BLOB.match(path):
            return self._blob(request, found["digest"])
        if found := _UPLOADS.match(path):
            return await self._upload(request, found["name"], found["upload"])
        if found := _MANIFEST.match(path):
            return await self._manifest(request, found["name"], found["reference"])
        return _error(404, "NOT_FOUND", path)

    def _token(self, request: Request) -> Response:
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return _error(401, "UNAUTHORIZED", "bad credentials")
        if "push" not in request.query_params.get("scope", ""):
            return _error(403, "DENIED", "the token's scope must include push")
        token = secrets.token_hex(16)
        self.tokens.add(token)
        return JSONResponse({"token": token})

    def _blob(self, request: Request, digest: str) -> Response:
        data = self.blobs.get(digest)
        if data is None:
            return _error(404, "BLOB_UNKNOWN", digest)
        headers = {"Content-Length": str(len(data)), "Docker-Content-Digest": digest}
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers)
        return Response(data, headers=headers)

    async def _upload(self, request: Request, name: str, upload: str) -> Response:
        if request.method == "POST" and not upload:
            upload = secrets.token_hex(8)
            self.uploads[upload] = bytearray()
            location = f"/v2/{name}/blobs/uploads/{upload}"
            return Response(status_code=202, headers={"Location": location})
        if upload not in self.uploads:
            return _error(404, "BLOB_UPLOAD_UNKNOWN", upload)
        self.uploads[upload] += await request.body()
        if request.method == "PATCH":
            return Response(status_code=202, headers={"Location": request.url.path})
        if request.method != "PUT":
            return _error(405, "UNSUPPORTED", request.method)
        data = bytes(self.uploads.pop(upload))
        digest = request.query_params.get("digest", "")
        if digest != f"sha256:{hashlib.sha256(data).hexdigest()}":
            return _error(400, "DIGEST_INVALID", f"{digest} does not match the uploaded bytes")
        self.blobs[digest] = data
        return Response(status_code=201, headers={"Location": f"/v2/{name}/blobs/{digest}"})

    async def _manifest(self, request: Request, name: str, reference: str) -> Response:
        if request.method in ("GET", "HEAD"):
            body = self.manifests.get((name, reference))
            if body is None:
                return _error(404, "MANIFEST_UNKNOWN", reference)
            return Response(body, media_type="application/vnd.oci.image.manifest.v1+json")
        if request.method != "PUT":
            return _error(405, "UNSUPPORTED", request.method)
        body = await request.body()
        try:
            manifest = json.loads(body)
            named = [manifest["config"], *manifest["layers"]]
        except (ValueError, KeyError, TypeError):
            return _error(400, "MANIFEST_INVALID", "not an image manifest")
        for descriptor in named:
            blob = self.blobs.get(descriptor.get("digest", ""))
            if blob is None or len(blob) != descriptor.get("size"):
                return _error(400, "MANIFEST_BLOB_UNKNOWN", str(descriptor.get("digest")))
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        self.manifests[(name, reference)] = body
        self.manifests[(name, digest)] = body
        return Response(status_code=201, headers={"Docker-Content-Digest": digest})
