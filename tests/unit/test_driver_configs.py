from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from vm_drivers.base import DriverContext, VMDriver
from vm_drivers.config import DriverConfig, parse_driver_config
from vm_drivers.registry import (
    DRIVER_CLASSES,
    available_driver_names,
    build_driver,
    platform_preference,
)


def union_members() -> tuple[type, ...]:
    union = typing.get_args(DriverConfig)[0]
    return typing.get_args(union) or (union,)


@pytest.mark.parametrize("member", union_members())
def test_every_driver_config_has_a_type_tag_and_forbids_unknown_keys(member: type) -> None:
    tag = member.model_fields["type"].default
    assert isinstance(tag, str)
    assert parse_driver_config({"type": tag}).type == tag
    with pytest.raises(ValidationError):
        parse_driver_config({"type": tag, "no_such_option": 1})


@pytest.mark.parametrize("member", union_members())
def test_every_driver_config_documents_its_fields(member: type) -> None:
    undocumented = [
        name
        for name, field in member.model_fields.items()
        if name != "type" and not field.description
    ]
    assert undocumented == []


def test_local_is_available_everywhere_this_build_runs() -> None:
    assert "local" in available_driver_names()


@pytest.mark.parametrize(
    ("system", "environment", "expected"),
    [
        ("Linux", None, ["firecracker", "qemu", "docker", "local"]),
        ("Darwin", None, ["lima", "docker"]),
        ("Windows", None, ["docker"]),
        ("Linux", "production", ["fly"]),
        ("Darwin", "docker", ["docker"]),
    ],
)
def test_platform_preference_follows_the_seed(
    system: str, environment: str | None, expected: list[str]
) -> None:
    assert platform_preference(system, environment) == expected


def test_every_driver_config_has_a_driver_to_build_and_it_follows_the_contract(
    tmp_path: Path,
) -> None:
    assert set(DRIVER_CLASSES) == set(available_driver_names())
    context = DriverContext.for_data_dir(tmp_path)
    for name in available_driver_names():
        driver = build_driver(parse_driver_config({"type": name}), context)
        assert driver.name == name
        assert isinstance(driver, VMDriver)


def test_the_process_driver_is_never_chosen_automatically() -> None:
    for system in ("Linux", "Darwin", "Windows"):
        assert "process" not in platform_preference(system)
