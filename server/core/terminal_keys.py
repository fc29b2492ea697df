"""Named keys as the bytes an xterm sends for them, so agents can type ``enter`` or ``ctrl-c``.

Arrows, home and end follow the terminal's cursor-key mode: a program that asks for
application mode (vim, less) gets ``ESC O A``, others ``ESC [ A``, as from a real xterm.
"""

from __future__ import annotations

import string

from server.domain.errors import InvalidInput

__all__ = ["KEY_NAMES", "key_bytes", "needs_cursor_mode"]

_FIXED: dict[str, bytes] = {
    "enter": b"\r",
    "tab": b"\t",
    "shift-tab": b"\x1b[Z",
    "escape": b"\x1b",
    "backspace": b"\x7f",
    "delete": b"\x1b[3~",
    "insert": b"\x1b[2~",
    "page-up": b"\x1b[5~",
    "page-down": b"\x1b[6~",
    "space": b" ",
    "f1": b"\x1bOP",
    "f2": b"\x1bOQ",
    "f3": b"\x1bOR",
    "f4": b"\x1bOS",
    "f5": b"\x1b[15~",
    "f6": b"\x1b[17~",
    "f7": b"\x1b[18~",
    "f8": b"\x1b[19~",
    "f9": b"\x1b[20~",
    "f10": b"\x1b[21~",
    "f11": b"\x1b[23~",
    "f12": b"\x1b[24~",
    "ctrl-space": b"\x00",
    "ctrl-@": b"\x00",
    "ctrl-[": b"\x1b",
    "ctrl-\\": b"\x1c",
    "ctrl-]": b"\x1d",
    "ctrl-^": b"\x1e",
    "ctrl-_": b"\x1f",
}
_FIXED.update({f"ctrl-{c}": bytes([ord(c) - ord("a") + 1]) for c in string.ascii_lowercase})
# Cursor keys: the final byte, after ESC [ (normal mode) or ESC O (application mode).
_CURSOR = {"up": b"A", "down": b"B", "right": b"C", "left": b"D", "home": b"H", "end": b"F"}
_ALIASES = {
    "return": "enter",
    "esc": "escape",
    "del": "delete",
    "bs": "backspace",
    "pgup": "page-up",
    "pageup": "page-up",
    "pgdn": "page-down",
    "pagedown": "page-down",
    "backtab": "shift-tab",
}

_LETTERS = {f"ctrl-{c}" for c in string.ascii_lowercase}
KEY_NAMES: list[str] = [
    *sorted(name for name in [*_FIXED, *_CURSOR] if name not in _LETTERS),
    "ctrl-a ... ctrl-z",
    "alt-<key>",
]


def _normal(name: str) -> str:
    canonical = name.strip().lower().replace("+", "-").replace("_", "-")
    if canonical.startswith(("control-", "c-")):
        canonical = "ctrl-" + canonical.split("-", 1)[1]
    return _ALIASES.get(canonical, canonical)


def needs_cursor_mode(names: list[str]) -> bool:
    """Whether any of the keys depends on the terminal's cursor-key mode."""
    return any(_normal(name).removeprefix("alt-") in _CURSOR for name in names)


def key_bytes(name: str, *, application_cursor: bool = False) -> bytes:
    """What typing the key ``name`` sends (``alt-x`` is ESC then x)."""
    canonical = _normal(name)
    if canonical.startswith("alt-") and len(canonical) > 4:
        return b"\x1b" + key_bytes(canonical[4:], application_cursor=application_cursor)
    if canonical in _FIXED:
        return _FIXED[canonical]
    if canonical in _CURSOR:
        return (b"\x1bO" if application_cursor else b"\x1b[") + _CURSOR[canonical]
    if len(name) == 1:
        return name.encode()  # a single character is itself (for alt-x)
    raise InvalidInput(
        f"unknown key {name!r}; the keys are {', '.join(KEY_NAMES)} (type text with the text "
        "parameter)"
    )
