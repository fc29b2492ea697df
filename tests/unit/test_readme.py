"""The README's generated parts match what the code says."""

from __future__ import annotations

import re
from pathlib import Path

from server.cli.limits import limits_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_lists_every_limit_with_its_default() -> None:
    found = re.search(
        r"<!-- limits:start[^>]*-->\n(.*?)\n<!-- limits:end -->", README.read_text(), re.S
    )
    assert found, "README.md has no limits table between the limits:start/end markers"
    assert found.group(1).strip() == limits_markdown(), (
        "the README's limits table is out of date: paste "
        "`projectvm limits --markdown --defaults` between its markers"
    )
