"""Identifiers ProjectVM makes: a kind prefix and 64 random bits (``prj_…``, ``exe_…``)."""

from __future__ import annotations

import secrets

__all__ = ["new_id"]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"
