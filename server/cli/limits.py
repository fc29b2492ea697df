"""``projectvm limits``: the limits this server enforces, with what each one means.

The README's table of limits is this command's ``--markdown --defaults`` output (a test keeps
the two the same), so the documentation cannot drift from the code.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pydantic.fields import FieldInfo

from server.cli.common import load_config, say
from server.domain.config import Limits

__all__ = ["limits", "limits_markdown"]


def _shown(value: Any, name: str) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if name.endswith("_bytes") and isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value % size == 0:
                return f"{value} ({value // size} {unit})"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _default(name: str, field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "this host's"
    return _shown(field.default, name)


def limits_markdown(current: Limits | None = None) -> str:
    """A table of every limit: its name, default (or current value) and meaning."""
    column = "value" if current is not None else "default"
    lines = [f"| limit (`[limits]` in config.toml) | {column} | what it bounds |", "|---|---|---|"]
    for name, field in Limits.model_fields.items():
        value = _shown(getattr(current, name), name) if current else _default(name, field)
        meaning = " ".join((field.description or "").split())
        lines.append(f"| `{name}` | {value} | {meaning} |")
    return "\n".join(lines)


async def limits(args: argparse.Namespace) -> None:
    current = None if args.defaults else load_config(args).limits
    if args.json:
        say(json.dumps((current or Limits()).model_dump(), indent=2))
        return
    if args.markdown:
        say(limits_markdown(current))
        return
    shown = current or Limits()
    width = max(len(name) for name in Limits.model_fields)
    for name, field in Limits.model_fields.items():
        description = " ".join((field.description or "").split())
        say(f"{name:<{width}}  {_shown(getattr(shown, name), name):<22} {description}")
