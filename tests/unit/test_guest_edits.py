"""The guest's exact-text edits and their bounded diff (``guest_runtime/agent/edits.py``)."""

from __future__ import annotations

import random
import re

import pytest

from guest_runtime.agent import edits
from guest_runtime.agent.edits import apply_edits, encoded, unified_diff
from guest_runtime.agent.errors import GuestError, InvalidParams
from guest_runtime.agent.methods import TextEdit

BIG = 1 << 30


def edited(text: str, *changes: TextEdit) -> tuple[str, int]:
    data, count = apply_edits(text.encode(), encoded(changes, len(text)), "f", BIG)
    return data.decode(), count


def patched(before: str, diff: str) -> str:
    """``before`` with a unified diff applied, checking every context and removed line."""
    source = before.splitlines(keepends=True)
    result: list[str] = []
    taken = 0
    lines = diff.splitlines(keepends=True)[2:]
    index = 0
    while index < len(lines):
        header = re.match(r"@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@\n", lines[index])
        assert header, lines[index]
        start, length = int(header.group(1)), int(header.group(2) or 1)
        until = start - 1 if length else start
        result += source[taken:until]
        taken = until
        index += 1
        while index < len(lines) and not lines[index].startswith("@@"):
            mark, body = lines[index][0], lines[index][1:]
            index += 1
            if index < len(lines) and lines[index].startswith("\\ No newline"):
                body = body[:-1]
                index += 1
            if mark in " -":
                assert source[taken] == body
                taken += 1
            if mark in " +":
                result.append(body)
    return "".join(result + source[taken:])


def test_edits_apply_in_order_and_count_replacements() -> None:
    text, count = edited(
        "a = 1\nb = 2\n",
        TextEdit(old_text="a = 1", new_text="a = 10"),
        TextEdit(old_text="a = 10\nb", new_text="a = 10\nc"),
    )
    assert (text, count) == ("a = 10\nc = 2\n", 2)


def test_an_ambiguous_edit_is_refused_unless_replace_all() -> None:
    with pytest.raises(InvalidParams, match="occurs 2 times"):
        edited("x x", TextEdit(old_text="x", new_text="y"))
    assert edited("x x", TextEdit("x", "y", replace_all=True)) == ("y y", 2)


def test_a_missing_or_empty_old_text_is_refused() -> None:
    with pytest.raises(InvalidParams, match="not found"):
        edited("abc", TextEdit(old_text="zzz", new_text="y"))
    with pytest.raises(InvalidParams, match="empty"):
        edited("abc", TextEdit(old_text="", new_text="y"))


def test_multibyte_text_is_replaced_as_characters() -> None:
    assert edited("Grüße, café", TextEdit("é", "e"), TextEdit("ü", "u")) == ("Gruße, cafe", 2)


def test_work_beyond_the_caps_is_refused_before_it_is_done() -> None:
    with pytest.raises(InvalidParams, match="at most 200 edits per call"):
        encoded([TextEdit("a", "b")] * 201, 10)
    with pytest.raises(InvalidParams, match="more work than one call may do"):
        encoded([TextEdit("a", "b")] * 200, 8 * 1024 * 1024)
    with pytest.raises(InvalidParams, match="at most 1048576 bytes"):
        encoded([TextEdit("a" * 600_000, "b" * 600_000)], 10)
    with pytest.raises(GuestError, match="over the 1000 bytes one file may have"):
        apply_edits(b"a" * 100, encoded([TextEdit("a", "b" * 20, True)], 100), "f", 1000)


def test_the_diff_is_a_valid_patch_of_the_change() -> None:
    chooser = random.Random(7)
    for trial in range(2000):
        lines = [
            chooser.choice(["x\n", "y\n", "hello\n", "a\n"]) for _ in range(chooser.randint(0, 30))
        ]
        if lines and trial % 3 == 0:
            lines[-1] = lines[-1].rstrip("\n")
        before = "".join(lines)
        after = list(before)
        for _ in range(chooser.randint(0, 4)):
            at = chooser.randint(0, len(after))
            after.insert(at, chooser.choice(["\n", "q", "new\n"]))
            if after and chooser.random() < 0.5:
                del after[chooser.randrange(len(after))]
        after_text = "".join(after)
        diff, cut = unified_diff(before.encode(), after_text.encode(), "f", BIG)
        assert not cut
        if before == after_text:
            assert diff == ""
        else:
            assert diff.startswith("--- a/f\n+++ b/f\n@@ ")
            assert patched(before, diff) == after_text


def test_a_large_changed_region_is_shown_as_one_replacement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(edits, "SPLIT_BYTES", 10)
    before = "".join(f"{n}\n" for n in range(100))
    after = before.replace("10\n", "ten\n").replace("90\n", "ninety\n")
    diff, _ = unified_diff(before.encode(), after.encode(), "f", BIG)
    assert diff.splitlines()[2] == "@@ -8,87 +8,87 @@"
    assert patched(before, diff) == after


def test_a_long_diff_is_cut_with_a_marker() -> None:
    before = b"a\n" * 500_000
    diff, cut = unified_diff(before, before.replace(b"a", b"b"), "f", 4096)
    assert cut
    assert len(diff.encode()) < 4096 + 200
    assert diff.endswith("the edit itself is whole: read the file to see the rest\n")


def test_a_one_line_change_in_a_big_file_names_its_line() -> None:
    before = b"".join(b"line %d\n" % n for n in range(1_000_000))
    after = before.replace(b"line 500000\n", b"changed\n")
    diff, _ = unified_diff(before, after, "big.txt", BIG)
    assert diff.splitlines()[2:] == [
        "@@ -499998,7 +499998,7 @@",
        " line 499997",
        " line 499998",
        " line 499999",
        "-line 500000",
        "+changed",
        " line 500001",
        " line 500002",
        " line 500003",
    ]
