"""Exact-text edits of a file's bytes, and a bounded unified diff of what they change.

The work one ``fs.edit`` may ask for is capped before any is done (the number of edits, the
size of their texts, edits times file size, the size of the result), so one call cannot occupy
the agent for long or exhaust its memory. Text is UTF-8: replacing the UTF-8 bytes of valid
text gives the same result as replacing characters, without decoding the file.

The diff is linear in the file's size: the common head and tail are found by comparing blocks,
and only the changed region in between (plus three lines of context) is split into lines and
matched with ``difflib`` — when it is small enough; a larger region is shown as one
replacement. Output stops at ``max_bytes``, with a marker saying so.
"""

from __future__ import annotations

import codecs
import difflib
from typing import Iterator, List, Sequence, Tuple

from .errors import GuestError, InvalidParams
from .methods import TextEdit

MAX_EDITS = 200
MAX_EDIT_TEXT_BYTES = 1024 * 1024  # old_text and new_text of all edits together
MAX_EDIT_WORK_BYTES = 1024 * 1024 * 1024  # edits x file size: each edit scans the whole file
DEFAULT_MAX_DIFF_BYTES = 256 * 1024
CONTEXT_LINES = 3
# difflib matches a changed region line by line only up to this many (old x new) line pairs.
MATCHED_CELLS = 4 * 1000 * 1000
# A changed region larger than this is not even split into lines: shown as one replacement.
SPLIT_BYTES = 4 * 1024 * 1024
BLOCK = 64 * 1024

Opcode = Tuple[str, int, int, int, int]


def encoded(edits: Sequence[TextEdit], size: int) -> List[Tuple[bytes, bytes, bool]]:
    """The edits as UTF-8 bytes, refused with a clear reason when they ask for too much."""
    if len(edits) > MAX_EDITS:
        raise InvalidParams(
            "edit_file takes at most %d edits per call (this one has %d); split them over "
            "several calls" % (MAX_EDITS, len(edits))
        )
    work = len(edits) * size
    if work > MAX_EDIT_WORK_BYTES:
        raise InvalidParams(
            "%d edits over a file of %d bytes is more work than one call may do (edits x file "
            "size at most %d bytes); send fewer edits per call" % (len(edits), size, work)
        )
    result = []
    total = 0
    for number, edit in enumerate(edits, 1):
        if not edit.old_text:
            raise InvalidParams("edit %d: old_text is empty; quote the text to replace" % number)
        try:
            old, new = edit.old_text.encode("utf-8"), edit.new_text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParams(
                "edit %d: the text is not valid Unicode (a lone surrogate); send valid text"
                % number
            ) from None
        total += len(old) + len(new)
        if total > MAX_EDIT_TEXT_BYTES:
            raise InvalidParams(
                "the old_text and new_text of all edits together may be at most %d bytes; "
                "split the edits over several calls, or write the file with write_file"
                % MAX_EDIT_TEXT_BYTES
            )
        result.append((old, new, edit.replace_all))
    return result


def check_text(data: bytes, path: str) -> None:
    """Refuse a file that is not UTF-8 text (checked in blocks: no decoded copy is kept)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for start in range(0, len(data), BLOCK * 16):
            decoder.decode(data[start : start + BLOCK * 16])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InvalidParams("%s is not UTF-8 text; edit_file edits text" % path) from None


def apply_edits(
    data: bytes, edits: List[Tuple[bytes, bytes, bool]], path: str, max_size: int
) -> Tuple[bytes, int]:
    """Apply the edits in order; each must match once (or everywhere with replace_all)."""
    replacements = 0
    for number, (old, new, replace_all) in enumerate(edits, 1):
        count = data.count(old)
        if count == 0:
            raise InvalidParams(
                "edit %d: old_text was not found; read the file again and copy the text "
                "exactly, including whitespace" % number
            )
        if count > 1 and not replace_all:
            raise InvalidParams(
                "edit %d: old_text occurs %d times; include more surrounding text to make it "
                "unique, or set replace_all" % (number, count)
            )
        size = len(data) + count * (len(new) - len(old))
        if size > max_size:
            raise GuestError(
                "too_large",
                "edit %d would make %s %d bytes, over the %d bytes one file may have; edit "
                "less at once, or produce the file with run_command"
                % (number, path, size, max_size),
                path=path,
                size=size,
                limit=max_size,
                what="file",
            )
        data = data.replace(old, new)
        replacements += count
    return data, replacements


# -- the diff ---------------------------------------------------------------------------------


def _common_prefix(a: bytes, b: bytes) -> int:
    limit = min(len(a), len(b))
    start = 0
    while start < limit and a[start : start + BLOCK] == b[start : start + BLOCK]:
        start += BLOCK
    end = min(start + BLOCK, limit)
    while start < end and a[start] == b[start]:
        start += 1
    return min(start, limit)


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """Length of the common tail, at most ``limit`` bytes."""
    length = 0
    while length < limit:
        step = min(BLOCK, limit - length)
        if (
            a[len(a) - length - step : len(a) - length]
            != b[len(b) - length - step : len(b) - length]
        ):
            break
        length += step
    end = min(length + BLOCK, limit)
    while length < end and a[len(a) - length - 1] == b[len(b) - length - 1]:
        length += 1
    return length


def _iter_lines(data: bytes, start: int, end: int) -> Iterator[bytes]:
    """The lines of ``data[start:end]``, each with its ``\\n`` (the last may lack one)."""
    while start < end:
        found = data.find(b"\n", start, end)
        stop = end if found < 0 else found + 1
        yield data[start:stop]
        start = stop


def _count_lines(data: bytes, start: int, end: int) -> int:
    if end <= start:
        return 0
    return data.count(b"\n", start, end) + (0 if data[end - 1 : end] == b"\n" else 1)


def _line_start_back(data: bytes, position: int, lines: int) -> int:
    """The start of the line ``lines`` lines before the one starting at ``position``."""
    for _ in range(lines):
        if position == 0:
            break
        position = data.rfind(b"\n", 0, position - 1) + 1
    return position


def _line_end_forward(data: bytes, position: int, lines: int) -> int:
    """The end of the ``lines`` lines starting at ``position``."""
    for _ in range(lines):
        if position >= len(data):
            break
        found = data.find(b"\n", position)
        position = len(data) if found < 0 else found + 1
    return position


def _changed_region(before: bytes, after: bytes) -> Tuple[int, int, int]:
    """(start, end in before, end in after): the lines that differ, as byte offsets."""
    prefix = _common_prefix(before, after)
    suffix = _common_suffix(before, after, min(len(before), len(after)) - prefix)
    start = before.rfind(b"\n", 0, prefix) + 1 if prefix else 0
    end = len(before) - suffix
    if end > 0 and before[end - 1 : end] != b"\n":
        found = before.find(b"\n", end)
        end = len(before) if found < 0 else found + 1
    end = max(end, start)
    return start, end, end + len(after) - len(before)


def _opcodes(old: List[bytes], new: List[bytes]) -> List[Opcode]:
    if len(old) * len(new) <= MATCHED_CELLS:
        return list(difflib.SequenceMatcher(None, old, new).get_opcodes())
    if old and new:
        return [("replace", 0, len(old), 0, len(new))]
    if old:
        return [("delete", 0, len(old), 0, 0)]
    return [("insert", 0, 0, 0, len(new))]


def _hunks(codes: List[Opcode], context: int) -> Iterator[List[Opcode]]:
    """Opcodes grouped into hunks with ``context`` lines around each change."""
    if not codes or all(code[0] == "equal" for code in codes):
        return
    tag, i1, i2, j1, j2 = codes[0]
    if tag == "equal":
        codes[0] = (tag, max(i1, i2 - context), i2, max(j1, j2 - context), j2)
    tag, i1, i2, j1, j2 = codes[-1]
    if tag == "equal":
        codes[-1] = (tag, i1, min(i2, i1 + context), j1, min(j2, j1 + context))
    group: List[Opcode] = []
    for tag, i1, i2, j1, j2 in codes:
        if tag == "equal" and i2 - i1 > 2 * context:
            group.append((tag, i1, i1 + context, j1, j1 + context))
            yield group
            group = []
            i1, j1 = i2 - context, j2 - context
        group.append((tag, i1, i2, j1, j2))
    if group and not (len(group) == 1 and group[0][0] == "equal"):
        yield group


def _range(start: int, stop: int) -> str:
    """A hunk range as unified diffs write it (1-based; an empty range names the line before)."""
    length = stop - start
    if length == 1:
        return str(start + 1)
    return "%d,%d" % (start + 1 if length else start, length)


def _text(prefix: str, line: bytes) -> str:
    text = prefix + line.decode("utf-8", errors="replace")
    return text if text.endswith("\n") else text + "\n\\ No newline at end of file\n"


def _codes(
    leading: int, middle: List[Opcode], old_total: int, new_total: int, trailing: int
) -> List[Opcode]:
    """The opcodes of the whole excerpt: context before, the middle's, context after."""
    codes: List[Opcode] = []
    if leading:
        codes.append(("equal", 0, leading, 0, leading))
    for tag, i1, i2, j1, j2 in middle:
        codes.append((tag, i1 + leading, i2 + leading, j1 + leading, j2 + leading))
    if trailing:
        codes.append(("equal", old_total - trailing, old_total, new_total - trailing, new_total))
    return codes


def _diff_lines(before: bytes, after: bytes, path: str) -> Iterator[str]:
    if before == after:
        return
    start, end_old, end_new = _changed_region(before, after)
    head = _line_start_back(before, start, CONTEXT_LINES)
    tail = _line_end_forward(before, end_old, CONTEXT_LINES)
    leading = list(_iter_lines(before, head, start))
    trailing = list(_iter_lines(before, end_old, tail))
    first = before.count(b"\n", 0, head)  # the line number of ``head``, counting from 0
    yield "--- a/%s\n" % path
    yield "+++ b/%s\n" % path
    if (end_old - start) + (end_new - start) > SPLIT_BYTES:
        # Too large to match line by line: one hunk replacing the region, read lazily.
        removed = _count_lines(before, start, end_old)
        added = _count_lines(after, start, end_new)
        yield "@@ -%s +%s @@\n" % (
            _range(first, first + len(leading) + removed + len(trailing)),
            _range(first, first + len(leading) + added + len(trailing)),
        )
        for line in leading:
            yield _text(" ", line)
        for line in _iter_lines(before, start, end_old):
            yield _text("-", line)
        for line in _iter_lines(after, start, end_new):
            yield _text("+", line)
        for line in trailing:
            yield _text(" ", line)
        return
    old_middle = list(_iter_lines(before, start, end_old))
    new_middle = list(_iter_lines(after, start, end_new))
    old = leading + old_middle + trailing
    new = leading + new_middle + trailing
    codes = _codes(
        len(leading), _opcodes(old_middle, new_middle), len(old), len(new), len(trailing)
    )
    for group in _hunks(codes, CONTEXT_LINES):
        yield "@@ -%s +%s @@\n" % (
            _range(first + group[0][1], first + group[-1][2]),
            _range(first + group[0][3], first + group[-1][4]),
        )
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                for line in old[i1:i2]:
                    yield _text(" ", line)
                continue
            for line in old[i1:i2]:
                yield _text("-", line)
            for line in new[j1:j2]:
                yield _text("+", line)


def unified_diff(before: bytes, after: bytes, path: str, max_bytes: int) -> Tuple[str, bool]:
    """The change as a unified diff of at most about ``max_bytes``; and whether it was cut."""
    pieces: List[str] = []
    size = 0
    for line in _diff_lines(before, after, path):
        length = len(line.encode("utf-8"))
        if size + length > max_bytes:
            pieces.append(
                "... the diff is cut here at %d bytes; the edit itself is whole: read the file "
                "to see the rest\n" % max_bytes
            )
            return "".join(pieces), True
        pieces.append(line)
        size += length
    return "".join(pieces), False
