"""What every command shares: the configuration, printing, and the store."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from server.domain.config import ServerConfig
from server.store import Store
from server.surfaces.mcp.server import default_user

__all__ = ["default_agent_name", "load_config", "say", "store_of"]


def load_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig.load(
        Path(args.data_dir) if args.data_dir else None, driver=getattr(args, "driver", None)
    )


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def default_agent_name() -> str:
    """The OS user as an agent id (lowercased, other characters replaced)."""
    name = re.sub(r"[^a-z0-9._-]", "-", default_user().lower()).strip("-._") or "agent"
    return name[:64]


@asynccontextmanager
async def store_of(args: argparse.Namespace) -> AsyncIterator[Store]:
    config = load_config(args)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    async with await Store.open(config.db_path) as store:
        yield store
