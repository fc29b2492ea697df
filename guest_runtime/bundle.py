"""The guest agent packed as a zip application, ready for a driver to inject into a VM.

The archive is built from the ``guest_runtime.agent`` sources with fixed timestamps, so the same
sources always give the same bytes and its digest names a version that drivers can cache.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from functools import cache
from importlib import resources
from pathlib import Path

__all__ = ["AGENT_FILENAME", "agent_zipapp", "agent_zipapp_digest", "write_agent_zipapp"]

AGENT_FILENAME = "projectvm-agent.pyz"
_PACKAGE = "projectvm_agent"
_ENTRY = b"from projectvm_agent.__main__ import main\nraise SystemExit(main())\n"
_EPOCH = (2020, 1, 1, 0, 0, 0)


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


@cache
def agent_zipapp() -> bytes:
    """The agent as ``python3``-runnable zip bytes (``python3 projectvm-agent.pyz --help``)."""
    source = resources.files("guest_runtime") / "agent"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        _add(archive, "__main__.py", _ENTRY)
        for item in sorted(source.iterdir(), key=lambda entry: entry.name):
            if item.name.endswith(".py"):
                _add(archive, f"{_PACKAGE}/{item.name}", item.read_bytes())
    return b"#!/usr/bin/env python3\n" + buffer.getvalue()


def agent_zipapp_digest() -> str:
    return hashlib.sha256(agent_zipapp()).hexdigest()[:16]


def write_agent_zipapp(directory: Path) -> Path:
    """Write the zipapp into ``directory`` (atomically, named by digest) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"projectvm-agent-{agent_zipapp_digest()}.pyz"
    if not target.exists():
        temporary = target.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(agent_zipapp())
        temporary.chmod(0o755)
        temporary.replace(target)
    return target
