"""Patterns an agent waits for (``terminal_read``'s ``wait_for``), matched at bounded cost.

An agent's regular expression is hostile input: ``(a+)+$`` against a screen of ``a`` takes
exponential time, and Python's ``re`` can be neither interrupted nor run without the GIL. The
``regex`` engine can do both, so a match runs in a worker thread with a deadline; one that
takes longer is refused with a clear error instead of holding the server.
"""

from __future__ import annotations

import functools

import anyio
import regex

from server.domain.errors import InvalidInput

__all__ = ["MATCH_DEADLINE_S", "MAX_PATTERN_CHARS", "WaitPattern"]

MATCH_DEADLINE_S = 0.25
MAX_PATTERN_CHARS = 1000


class WaitPattern:
    """A compiled ``wait_for`` pattern (multi-line: ``^`` and ``$`` match at each line)."""

    def __init__(self, text: str) -> None:
        if len(text) > MAX_PATTERN_CHARS:
            raise InvalidInput(
                f"wait_for is {len(text)} characters long; at most {MAX_PATTERN_CHARS} are "
                "accepted: wait for a shorter pattern"
            )
        try:
            self._compiled = regex.compile(text, regex.MULTILINE | regex.VERSION0)
        except regex.error as err:
            raise InvalidInput(f"wait_for is not a valid regular expression: {err}") from None
        self.text = text

    async def found_in(self, text: str) -> bool:
        """Whether the pattern occurs in ``text``; refused if matching outlasts the deadline."""
        search = functools.partial(
            self._compiled.search, text, timeout=MATCH_DEADLINE_S, concurrent=True
        )
        try:
            return await anyio.to_thread.run_sync(search) is not None
        except TimeoutError:
            raise InvalidInput(
                f"wait_for {self.text[:80]!r} took more than {MATCH_DEADLINE_S:g}s to match the "
                "terminal's text (nested repetition backtracks); use a simpler pattern, e.g. "
                "the prompt's literal text"
            ) from None
