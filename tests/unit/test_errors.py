"""Every error kind the guest agent can send maps to a host exception class."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import guest_runtime.agent as agent_package
from guest_runtime.errors import (
    GuestError,
    InvalidRequest,
    PathOutsideWorkspace,
    ProjectVMError,
    WriteConflict,
    guest_error_from_wire,
)


def kinds_the_agent_emits() -> set[str]:
    source = "\n".join(p.read_text() for p in Path(agent_package.__file__).parent.glob("*.py"))
    return set(re.findall(r'GuestError\(\s*"([a-z_]+)"', source))


def test_the_agent_emits_a_known_set_of_kinds() -> None:
    assert {"path_outside_workspace", "conflict", "not_found"} <= kinds_the_agent_emits()


@pytest.mark.parametrize("kind", sorted(kinds_the_agent_emits()))
def test_every_agent_error_kind_maps_to_a_specific_class(kind: str) -> None:
    error = guest_error_from_wire({"code": -32000, "message": "m", "data": {"kind": kind}})
    if kind != "internal":
        assert type(error) is not GuestError, f"kind {kind!r} has no specific class"
    assert isinstance(error, ProjectVMError)
    assert str(error) == "m"


def test_wire_errors_keep_their_data() -> None:
    error = guest_error_from_wire(
        {"code": -32000, "message": "changed", "data": {"kind": "conflict", "current_sha256": "ab"}}
    )
    assert isinstance(error, WriteConflict)
    assert error.current_sha256 == "ab"


def test_classes_also_inherit_the_matching_builtin() -> None:
    assert issubclass(PathOutsideWorkspace, PermissionError)
    assert issubclass(InvalidRequest, ValueError)
    assert isinstance(guest_error_from_wire("nonsense"), GuestError)
