"""Files over REST as people expect them: raw bytes with an ``ETag``, streamed both ways.

``GET .../files/{path}`` answers the file's bytes (``Accept: application/json`` gets
``read_file``'s JSON instead). The ``ETag`` is the content's sha256; ``If-None-Match`` with it
is a 304; ``Range: bytes=...`` (one range) a 206. The bytes are read from the guest in pieces,
each a ``read_file`` call of its own, so the server never holds the whole file, and a file
replaced mid-download ends the response early (its sha256 changed) rather than splice two
versions. A file is served so that no browser runs it as one of this server's pages (a
sandboxing ``Content-Security-Policy``, ``nosniff``; HTML, SVG, XML, scripts and PDF as
attachments).

``PUT .../files/{path}`` takes the raw bytes as the new content: ``If-Match: <sha256>``
replaces only that version (else 412 naming the current sha256 and who changed it),
``If-None-Match: *`` only creates. A body larger than one piece streams into the workspace
(``ProjectService.upload``) and appears at once, whole, when complete.
"""

from __future__ import annotations

import base64
import mimetypes
import posixpath
from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from server.core.requests import ReadFile, WriteFile
from server.core.results import FileRead, FileWrite
from server.domain.operations import Operation
from server.surfaces.http.problems import Problem
from server.surfaces.http.rest.api import JSON, ClientGone, RestApi, json_response
from server.surfaces.http.rest.binding import bind, entity_tag
from server.surfaces.http.rest.routes import API_PREFIX, Route

__all__ = ["PIECE_BYTES", "read_file", "write_file"]

# One range of a download or one piece of an upload: what the server holds at a time.
PIECE_BYTES = 4 * 1024 * 1024
# What a download hands the connection at once: a client that reads slowly (or not at all)
# then leaves at most this much in the connection's buffer, beside the piece being sent.
WRITE_BYTES = 64 * 1024


# A file is whatever an agent wrote: a browser must never run it as a page of this server (it
# would act with the viewer's session). Any document is sandboxed, with no scripts and no
# loads, and the kinds a browser renders as pages are downloads rather than shown.
CONTENT_POLICY = {
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "X-Content-Type-Options": "nosniff",
}
ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "text/xsl",
        "application/xslt+xml",
        "text/javascript",
        "application/javascript",
        "application/pdf",
    }
)


def _content_headers(path: str, media_type: str) -> dict[str, str]:
    headers = dict(CONTENT_POLICY)
    if media_type in ACTIVE_TYPES:
        name = quote(posixpath.basename(path) or "file")
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{name}"
    return headers


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return JSON in accept and "application/octet-stream" not in accept


def _etag(sha256: str) -> str:
    return f'"{sha256}"'


def _matches(header: str | None, sha256: str) -> bool:
    if header is None:
        return False
    return any(tag.strip() == "*" or entity_tag(tag) == sha256 for tag in header.split(","))


class _FileChanged(Exception):
    """The file was replaced while it was being sent."""


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` (one range) as ``[start, stop)``; ``None`` when unsatisfiable."""
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash or "," in spec:
        raise Problem(
            416, "range-not-satisfiable", "Range not satisfiable",
            "send one range, as Range: bytes=START-END, bytes=START- or bytes=-LAST_N",
            size=size,
        )  # fmt: skip
    try:
        if not first:  # the last N bytes
            start, stop = max(0, size - int(last)), size
        else:
            start = int(first)
            stop = size if not last else min(size, int(last) + 1)
    except ValueError:
        return None
    return (start, stop) if 0 <= start < stop else None


async def read_file(api: RestApi, route: Route, request: Request) -> Response:
    if _wants_json(request):
        model = await bind(request, route)
        result = await api.call(request, route.operation, model)
        assert isinstance(result, FileRead)
        return json_response(result, 200, {"ETag": _etag(result.sha256)})
    model = await bind(request, route, extra={"encoding": "base64"})
    assert isinstance(model, ReadFile)
    service, caller = api.service, api.caller(request, Operation.READ_FILE)
    wanted = request.headers.get("range")

    def piece(offset: int, end: int | None) -> ReadFile:
        length = PIECE_BYTES if end is None else max(0, min(PIECE_BYTES, end - offset))
        return model.model_copy(update={"offset": offset, "limit": length})

    start = model.offset or 0
    end = None if model.limit is None else start + model.limit
    # With a Range, the size comes first (an empty read): a suffix range needs it.
    first = await service.call(caller, piece(start, start if wanted else end))
    assert isinstance(first, FileRead)
    media_type = mimetypes.guess_type(first.path)[0] or "application/octet-stream"
    headers = {
        "ETag": _etag(first.sha256),
        "Cache-Control": "no-cache",
        "Accept-Ranges": "bytes",
        **_content_headers(first.path, media_type),
    }
    if _matches(request.headers.get("if-none-match"), first.sha256):
        return Response(status_code=304, headers=headers)
    status = 200
    if wanted:
        found = _byte_range(wanted, first.size)
        if found is None:
            headers["Content-Range"] = f"bytes */{first.size}"
            return Response(status_code=416, headers=headers)
        start, end = found
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{first.size}"
        status = 206
        first = await service.call(caller, piece(start, end))
        assert isinstance(first, FileRead)
    stop = first.size if end is None else min(end, first.size)
    headers["Content-Length"] = str(max(0, stop - start))
    sha256, path = first.sha256, first.path
    data = base64.b64decode(first.content)
    del first  # only the bytes are kept while they are sent, not their base64 too

    async def pieces() -> AsyncIterator[bytes]:
        nonlocal data
        offset = start
        while True:
            for at in range(0, len(data), WRITE_BYTES):
                yield data[at : at + WRITE_BYTES]
            offset += len(data)
            if offset >= stop or not data:
                return
            data = b""  # the piece sent is let go before the next one is read
            following = await service.call(caller, piece(offset, end))
            assert isinstance(following, FileRead)
            if following.sha256 != sha256:
                # Too late for a status: ending short makes the client see a broken transfer.
                raise _FileChanged(f"{path} changed during the download; fetch it again")
            data = base64.b64decode(following.content)
            del following

    return StreamingResponse(pieces(), status, headers, media_type)


async def _pieces_of(request: Request) -> AsyncIterator[bytes]:
    """The body in pieces of PIECE_BYTES (the last may be shorter)."""
    buffer = bytearray()
    try:
        async for chunk in request.stream():
            buffer += chunk
            while len(buffer) >= PIECE_BYTES:
                yield bytes(buffer[:PIECE_BYTES])
                del buffer[:PIECE_BYTES]
    except ClientDisconnect:
        raise ClientGone("the client left during the upload") from None
    if buffer:
        yield bytes(buffer)


async def write_file(api: RestApi, route: Route, request: Request) -> Response:
    # The body is the content, as bytes: neither may be given as a parameter.
    model = await bind(request, route, extra={"content": "", "encoding": "utf-8"})
    assert isinstance(model, WriteFile)
    service = api.service
    limit = service.limits.max_file_bytes
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > limit:
        raise Problem(
            413, "limit-exceeded", "Limit exceeded",
            f"the upload is {declared} bytes; one file write takes at most {limit} bytes "
            "here; produce a larger file inside the VM with run_command",
        )  # fmt: skip
    caller = api.caller(request, Operation.WRITE_FILE)
    pieces = _pieces_of(request)
    small = declared is not None and int(declared) <= PIECE_BYTES
    if small or model.append:
        # One piece: an ordinary atomic write_file (appending is only offered this way).
        data = b""
        async for piece in pieces:
            data += piece
            if len(data) > PIECE_BYTES:
                raise Problem(
                    413, "limit-exceeded", "Limit exceeded",
                    f"an append takes at most {PIECE_BYTES} bytes per request; send the rest "
                    "in further appends",
                )  # fmt: skip
        content = base64.b64encode(data).decode()
        whole = model.model_copy(update={"content": content, "encoding": "base64"})
        result = await service.call(caller, whole)
    else:
        result = await service.upload(caller, model, pieces)
    assert isinstance(result, FileWrite)
    # An append answers without the file's hash (it is not read back): then no ETag.
    headers = {"ETag": _etag(result.sha256)} if result.sha256 is not None else {}
    if result.created:
        where = quote(result.path)  # a header is ASCII; paths may not be
        headers["Location"] = f"{API_PREFIX}/projects/{result.project_id}/files/{where}"
        return json_response(result, 201, headers)
    return json_response(result, 200, headers)
