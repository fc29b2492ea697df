from __future__ import annotations

import pytest

from server.core.edits import apply_edits
from server.core.requests import Edit as TextEdit
from server.domain.errors import InvalidInput


def test_edits_apply_in_order_and_count_replacements() -> None:
    text, count = apply_edits(
        "a = 1\nb = 2\n",
        [
            TextEdit(old_text="a = 1", new_text="a = 10"),
            TextEdit(old_text="a = 10\nb", new_text="a = 10\nc"),
        ],
    )
    assert text == "a = 10\nc = 2\n"
    assert count == 2


def test_an_ambiguous_edit_is_refused_unless_replace_all() -> None:
    with pytest.raises(InvalidInput, match="occurs 2 times"):
        apply_edits("x x", [TextEdit(old_text="x", new_text="y")])
    assert apply_edits("x x", [TextEdit(old_text="x", new_text="y", replace_all=True)]) == (
        "y y",
        2,
    )


def test_a_missing_or_empty_old_text_is_refused() -> None:
    with pytest.raises(InvalidInput, match="not found"):
        apply_edits("abc", [TextEdit(old_text="zzz", new_text="y")])
    with pytest.raises(InvalidInput, match="empty"):
        apply_edits("abc", [TextEdit(old_text="", new_text="y")])
