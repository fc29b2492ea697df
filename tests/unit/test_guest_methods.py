"""The guest protocol's request types: what the host sends is what the agent accepts."""

from __future__ import annotations

import pytest

from guest_runtime.agent import methods
from guest_runtime.agent.errors import InvalidParams
from guest_runtime.agent.methods import ExecStart, FsRead, parse, to_params


def test_a_request_survives_the_trip_to_the_agent() -> None:
    sent = ExecStart(command=["ls", "-la"], exec_id="e1", env={"A": "1"}, timeout_s=5.0)
    assert parse(ExecStart, to_params(sent)) == sent
    read = FsRead(path="a.txt", line_offset=3)
    assert to_params(read) == {"path": "a.txt", "offset": 0, "line_offset": 3}
    assert parse(FsRead, to_params(read)) == read


def test_unknown_or_mistyped_parameters_are_refused_by_name() -> None:
    with pytest.raises(InvalidParams, match="unknown parameter"):
        parse(FsRead, {"path": "a", "offest": 1})
    with pytest.raises(InvalidParams, match="'offset'"):
        parse(FsRead, {"path": "a", "offset": "1"})
    with pytest.raises(InvalidParams, match="'offset'"):
        parse(FsRead, {"path": "a", "offset": True})
    with pytest.raises(InvalidParams, match="'path' is required"):
        parse(FsRead, {})
    with pytest.raises(InvalidParams, match="'command'"):
        parse(ExecStart, {"command": ["ls", 3]})
    assert parse(ExecStart, {"command": "ls", "timeout_s": 2}).timeout_s == 2.0


def test_every_method_has_its_parameter_type() -> None:
    names = {
        value
        for name, value in vars(methods).items()
        if (name.isupper() and isinstance(value, str) and "." in value) or value == "hello"
    }
    notifications = {methods.EXEC_OUTPUT, methods.EXEC_EXIT, methods.TERM_OUTPUT, methods.TERM_EXIT}
    assert names - notifications == set(methods.PARAMS)
