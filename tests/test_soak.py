"""The soak script, short: many agents, one project, nothing lost (the long run is manual)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

pytestmark = pytest.mark.anyio

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"


async def test_a_short_soak_has_no_errors_and_every_call_recorded(requires_bwrap: None) -> None:
    result = await anyio.run_process(
        [sys.executable, str(SCRIPT), "--agents", "25", "--seconds", "8"],
        check=False,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    report = json.loads(result.stdout)
    assert report["errors"] == 0
    assert report["executions_acknowledged"] > 50
    assert report["executions_recorded"] == report["executions_acknowledged"]
    assert report["missing_write_events"] == 0
    assert report["database_integrity"] == "ok"
