"""A validation error as a short text an agent can act on, whatever the input was.

pydantic reports one error per bad item, so a crafted body (a list of half a million wrong
items, an object of half a million unknown keys) makes errors by the million: listing them all
took seconds of the event loop and answers of a hundred megabytes. Here at most a few are named
and the rest counted; past ``ENUMERABLE`` errors none are converted at all (``error_count`` is
free, ``errors()`` is not).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

__all__ = ["ENUMERABLE", "LISTED", "describe", "problems"]

# Errors named in a message; the others are only counted.
LISTED = 8
# Past this many errors, none is named (converting them is what costs).
ENUMERABLE = 1000


def problems(err: ValidationError, most: int = LISTED) -> list[dict[str, Any]]:
    """Up to ``most`` errors as ``{"field", "message"}`` (none when there are too many)."""
    if err.error_count() > ENUMERABLE:
        return []
    found = err.errors(include_url=False, include_input=False, include_context=False)
    return [
        {"field": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
        for error in found[:most]
    ]


def describe(err: ValidationError, most: int = LISTED, whole: str = "arguments") -> str:
    """``field: message; ...`` for the first ``most`` errors, and how many more there are.

    ``whole`` names what an error without a field is about (the arguments, the message).
    """
    count = err.error_count()
    named = problems(err, most)
    if not named:
        return (
            f"{count} problems, too many to list: send each list and object with the "
            "documented fields and types, within their sizes"
        )
    text = "; ".join(f"{p['field'] or whole}: {p['message']}" for p in named)
    if count > len(named):
        text += f" (and {count - len(named)} more problems)"
    return text
