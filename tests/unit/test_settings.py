"""Project settings: rules added later repair what older versions stored, and refuse it anew."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.domain.models import MIN_AUTO_SLEEP_MINUTES, STORED, ProjectSettings


def test_a_tiny_auto_sleep_is_refused_when_asked_for_and_repaired_when_stored() -> None:
    with pytest.raises(ValidationError, match=r"at least 0\.01 minutes"):
        ProjectSettings(auto_sleep_minutes=1e-9)
    stored = ProjectSettings.model_validate_json('{"auto_sleep_minutes": 1e-9}', context=STORED)
    assert stored.auto_sleep_minutes == MIN_AUTO_SLEEP_MINUTES
    assert ProjectSettings(auto_sleep_minutes=0).auto_sleep_minutes == 0


def test_an_env_value_with_nul_is_refused_new_but_readable_when_stored() -> None:
    with pytest.raises(ValidationError, match="contains a NUL character"):
        ProjectSettings(environment_variables={"A": "x\x00y"})
    raw = '{"environment_variables": {"A": "x\\u0000y"}}'
    assert ProjectSettings.model_validate_json(raw, context=STORED).environment_variables == {
        "A": "x\x00y"
    }
