"""Exact-text edits and their unified diff: pure functions, run off the event loop by callers."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from server.core.requests import Edit
from server.domain.errors import InvalidInput

__all__ = ["apply_edits", "unified_diff"]


def apply_edits(text: str, edits: Sequence[Edit]) -> tuple[str, int]:
    """Apply exact-text edits in order; each must match once (or everywhere with replace_all)."""
    replacements = 0
    for number, edit in enumerate(edits, 1):
        if not edit.old_text:
            raise InvalidInput(f"edit {number}: old_text is empty; quote the text to replace")
        count = text.count(edit.old_text)
        if count == 0:
            raise InvalidInput(
                f"edit {number}: old_text was not found; read the file again and copy the text "
                "exactly, including whitespace"
            )
        if count > 1 and not edit.replace_all:
            raise InvalidInput(
                f"edit {number}: old_text occurs {count} times; include more surrounding text "
                "to make it unique, or set replace_all"
            )
        text = text.replace(edit.old_text, edit.new_text)
        replacements += count
    return text, replacements


def unified_diff(before: str, after: str, path: str) -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"a/{path}",
            tofile=f"b/{path}",
        )
    )
