"""limactl's version, list output and failures, read and translated by the lima driver."""

from __future__ import annotations

import json
import re

import pytest

from vm_drivers.config import LimaDriverConfig
from vm_drivers.errors import (
    DriverConfigError,
    DriverTimeout,
    DriverUnavailable,
    GuestUnreachable,
    VMCreationFailed,
    VMNotFound,
    VMOperationFailed,
    VMResourceExhausted,
)
from vm_drivers.lima.limactl import (
    FAILURE_TRANSLATIONS,
    Limactl,
    LimactlFailure,
    _messages,
    parse_version,
    translate_failure,
)
from vm_drivers.lima.records import instance_name

LIMA_NAME = re.compile(r"^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*$")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("limactl version 2.2.0", (2, 2, 0)),
        ("limactl version v2.0.0-beta.1", (2, 0, 0)),
        ("limactl version 2.1.0-12-gabcdef0", (2, 1, 0)),
        ("limactl version 1.0.6", (1, 0, 6)),
        ("limactl version 0.23", (0, 23, 0)),
        ("limactl version HEAD-abcdef", None),
    ],
)
def test_versions_are_read_the_way_limactl_prints_them(
    text: str, expected: tuple[int, int, int] | None
) -> None:
    assert parse_version(text) == expected


def failure(message: str, code: int = 1) -> LimactlFailure:
    return LimactlFailure(["/usr/bin/limactl", "--tty=false", "start", "x"], code, message)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("must not run as the root user", DriverUnavailable),
        ('instance name "x" too long: must be less than UNIX_PATH_MAX=104', DriverConfigError),
        ('instance "x" does not exist, run `limactl create x`', VMNotFound),
        ('instance "x" already exists ("/h/x")', VMCreationFailed),
        ('did not receive an event with the "running" status', DriverTimeout),
        ("write /h/x/diffdisk: no space left on device", VMResourceExhausted),
        (
            'expected status "Running", got "Stopped" (maybe use `limactl stop -f`?)',
            VMOperationFailed,
        ),
        ("degraded, status={Running:true Degraded:true}", VMOperationFailed),
        ("something nobody has seen before", VMOperationFailed),
    ],
)
def test_limactl_failures_become_driver_errors_that_say_what_to_do(
    message: str, expected: type[Exception]
) -> None:
    error = translate_failure(failure(message), "starting x")
    assert type(error) is expected
    if expected is not DriverUnavailable:
        assert str(error).startswith("starting x failed")
    assert message in str(error)
    assert ";" in str(error)  # limactl's words, then what to do next


def test_every_translation_pattern_is_reachable() -> None:
    for pattern, kind, hint in FAILURE_TRANSLATIONS:
        assert hint
        sample = pattern.split("|")[0].replace("\\", "")
        assert type(translate_failure(failure(sample), "doing")) is kind, pattern


def test_a_dropped_ssh_connection_is_an_unreachable_guest() -> None:
    error = translate_failure(failure("Connection closed by remote host", 255), "running x")
    assert isinstance(error, GuestUnreachable)
    assert "--reconnect" in str(error)


def test_json_logs_give_the_fatal_message() -> None:
    stderr = "\n".join(
        json.dumps(line)
        for line in (
            {"level": "info", "msg": "Starting the instance", "time": "t"},
            {"level": "warning", "msg": "something minor", "time": "t"},
            {"level": "fatal", "msg": 'instance "x" is stopped', "time": "t"},
        )
    ).encode()
    assert _messages(stderr) == 'instance "x" is stopped'
    assert _messages(b"plain text from ssh\n") == "plain text from ssh"
    assert _messages(b"") == "(no message)"


def test_list_lines_are_read_one_json_object_per_line() -> None:
    lines = (
        '{"name":"a","status":"Running","dir":"/h/a","cpus":2,"memory":4294967296,'
        '"disk":107374182400,"param":{"K":"v"},"unknownField":1}\n'
        '{"name":"b","status":"Broken","errors":["bad yaml"]}\n'
    )
    found = Limactl._parse_list(lines.encode())
    assert set(found) == {"a", "b"}
    assert (found["a"].status, found["a"].memory, found["a"].param) == (
        "Running",
        4 << 30,
        {"K": "v"},
    )
    assert found["b"].errors == ["bad yaml"]
    with pytest.raises(VMOperationFailed, match=r"Lima 2\.x"):
        Limactl._parse_list(b"[1, 2]\n")


def test_instance_names_are_short_valid_and_stable() -> None:
    name = instance_name("pvm-", "install1", "prj_" + "x" * 60)
    assert name == instance_name("pvm-", "install1", "prj_" + "x" * 60)
    assert name != instance_name("pvm-", "install2", "prj_" + "x" * 60)
    assert LIMA_NAME.match(name)
    assert len(name) == 14


def test_a_missing_limactl_is_reported_with_how_to_install_it() -> None:
    with pytest.raises(DriverUnavailable, match="brew install lima"):
        Limactl("no-such-limactl-here").path()


def test_lima_instance_in_the_environment_selects_shared_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIMA_INSTANCE", "dev")
    assert LimaDriverConfig().shared_instance == "dev"
    monkeypatch.delenv("LIMA_INSTANCE")
    assert LimaDriverConfig().shared_instance is None
    assert LimaDriverConfig(shared_instance="other").shared_instance == "other"
