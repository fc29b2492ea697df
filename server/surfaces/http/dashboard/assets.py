"""The dashboard's files, shipped inside the package (``static/``) and served from memory.

They are read once, in a worker thread, on the first request that needs them; text files are
also kept gzip-compressed, for the browsers that accept it (all of them). Each has an ``ETag``
(its sha256), so a revisit is a 304 per file.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import anyio
import anyio.to_thread

__all__ = ["STATIC_PACKAGE", "Asset", "AssetShelf", "media_type_of"]

STATIC_PACKAGE = "server.surfaces.http.dashboard"
STATIC_DIR = "static"

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
PLAIN_TEXT = "text/plain; charset=utf-8"  # LICENSE files and anything unnamed
COMPRESSIBLE = ("text/", "application/json", "image/svg+xml")


def media_type_of(name: str) -> str:
    suffix = name[name.rfind(".") :] if "." in name else ""
    return MEDIA_TYPES.get(suffix.lower(), PLAIN_TEXT)


@dataclass(frozen=True)
class Asset:
    path: str  # relative to static/, with "/"
    media_type: str
    body: bytes
    gzipped: bytes | None  # None when compressing does not pay
    etag: str

    @classmethod
    def of(cls, path: str, body: bytes) -> Asset:
        media_type = media_type_of(path)
        gzipped = None
        if media_type.startswith(COMPRESSIBLE):
            packed = gzip.compress(body, compresslevel=9, mtime=0)
            gzipped = packed if len(packed) < len(body) else None
        return cls(path, media_type, body, gzipped, f'"{hashlib.sha256(body).hexdigest()}"')


def _walk(folder: Traversable, prefix: str = "") -> dict[str, Asset]:
    found: dict[str, Asset] = {}
    for entry in folder.iterdir():
        name = prefix + entry.name
        if entry.is_dir():
            found.update(_walk(entry, name + "/"))
        elif entry.is_file() and not entry.name.startswith("."):
            found[name] = Asset.of(name, entry.read_bytes())
    return found


def read_static() -> dict[str, Asset]:
    """Every file under ``static/`` by its relative path (blocking: run it in a thread)."""
    return _walk(resources.files(STATIC_PACKAGE).joinpath(STATIC_DIR))


class AssetShelf:
    """The files, loaded on first use."""

    def __init__(self) -> None:
        self._assets: dict[str, Asset] | None = None
        self._loading = anyio.Lock()

    async def get(self, path: str) -> Asset | None:
        if self._assets is None:
            async with self._loading:
                if self._assets is None:
                    self._assets = await anyio.to_thread.run_sync(read_static)
        return self._assets.get(path)
