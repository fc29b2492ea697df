"""The driver's Firecracker API models against the official OpenAPI spec.

``firecracker-api.yaml`` beside this file is Firecracker's own
``src/firecracker/swagger/firecracker.yaml`` (Apache-2.0, firecracker-microvm/firecracker at
81b38b9), byte for byte. Every endpoint the driver calls must exist there with the same body
and answer definitions; every model field must be a field of its definition with the same JSON
type and an enum inside the spec's; the spec's required fields must always be sent; and every
payload the driver builds must validate against the definition, with unknown fields refused.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from vm_drivers.firecracker.api import (
    ENDPOINTS,
    Fault,
    InstanceActionInfo,
    MemoryBackend,
    NetworkOverride,
    SnapshotCreateParams,
    SnapshotLoadParams,
    Vm,
    VsockOverride,
    _Answer,
    _Request,
)
from vm_drivers.firecracker.machine import MachineSettings, configuration_calls
from vm_drivers.firecracker.network import TapPlan


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false (YAML 1.1 would read the log level Off as false)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

SPEC: dict[str, Any] = yaml.load(
    Path(__file__).with_name("firecracker-api.yaml").read_text(), Loader=_Yaml12Loader
)
DEFINITIONS: dict[str, Any] = SPEC["definitions"]
JSON_TYPES = {str: "string", int: "integer", bool: "boolean", float: "number"}


def _strict(schema: Any) -> Any:
    """The schema with unknown properties refused at every level that lists its properties."""
    if isinstance(schema, dict):
        strict = {key: _strict(value) for key, value in schema.items()}
        if "properties" in strict and "additionalProperties" not in strict:
            strict["additionalProperties"] = False
        return strict
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


STRICT_DEFINITIONS = _strict(copy.deepcopy(DEFINITIONS))


def spec_errors(definition: str, payload: Any) -> list[str]:
    """Why ``payload`` is not a valid ``definition`` (empty when it is)."""
    schema = {"$ref": f"#/definitions/{definition}", "definitions": STRICT_DEFINITIONS}
    validator = jsonschema.Draft4Validator(schema)
    return [
        f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(payload)
    ]


def _models(base: type[BaseModel]) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for cls in base.__subclasses__():
        if cls.__module__ == "vm_drivers.firecracker.api":
            found.append(cls)
    return sorted(found, key=lambda cls: cls.__name__)


def _annotation_facts(annotation: Any) -> tuple[set[str], set[Any] | None, type[BaseModel] | None]:
    """JSON types, enum values (Literal) and nested model of a field annotation."""
    types_found: set[str] = set()
    values: set[Any] | None = None
    nested: type[BaseModel] | None = None
    arguments = [annotation]
    while arguments:
        current = arguments.pop()
        origin = typing.get_origin(current)
        if origin in (typing.Union, types.UnionType):
            arguments += [a for a in typing.get_args(current) if a is not type(None)]
        elif origin is Literal:
            literal = set(typing.get_args(current))
            values = literal if values is None else values | literal
            types_found |= {JSON_TYPES[type(value)] for value in literal}
        elif origin is list:
            types_found.add("array")
            (item,) = typing.get_args(current)
            _, _, nested = _annotation_facts(item)
        elif origin is dict:
            types_found.add("object")
        elif isinstance(current, type) and issubclass(current, BaseModel):
            types_found.add("object")
            nested = current
        elif current in JSON_TYPES:
            types_found.add(JSON_TYPES[current])
        else:
            raise AssertionError(f"the test does not know the annotation {current!r}")
    return types_found, values, nested


def _spec_type(prop: dict[str, Any]) -> tuple[str, str | None]:
    """A spec property's JSON type, and the definition it refers to (itself or its items)."""
    if "$ref" in prop:
        return "object", prop["$ref"].rsplit("/", 1)[1]
    if prop.get("type") == "array" and "$ref" in prop.get("items", {}):
        return "array", prop["items"]["$ref"].rsplit("/", 1)[1]
    return prop["type"], None


def model_problems(model: type[BaseModel]) -> list[str]:
    """How ``model`` differs from its spec definition (empty when it matches)."""
    name: str = model.SPEC_DEFINITION  # type: ignore[attr-defined]
    definition = DEFINITIONS.get(name)
    if definition is None:
        return [f"{model.__name__}: the spec has no definition {name}"]
    properties = definition.get("properties", {})
    problems = []
    by_wire_name = {
        (field.alias or field_name): field for field_name, field in model.model_fields.items()
    }
    for wire_name, field in by_wire_name.items():
        prop = properties.get(wire_name)
        if prop is None:
            problems.append(f"{model.__name__}.{wire_name} is not a field of {name}")
            continue
        ours, values, nested = _annotation_facts(field.annotation)
        theirs, reference = _spec_type(prop)
        if theirs not in ours:
            problems.append(f"{model.__name__}.{wire_name} is {ours}, the spec says {theirs}")
        if values is not None and "enum" in prop and not values <= set(prop["enum"]):
            problems.append(
                f"{model.__name__}.{wire_name} allows {values - set(prop['enum'])} outside the "
                f"spec's enum {prop['enum']}"
            )
        if reference is not None and nested is not None:
            nested_name = getattr(nested, "SPEC_DEFINITION", None)
            if nested_name != reference:
                problems.append(
                    f"{model.__name__}.{wire_name} holds {nested_name}, the spec {reference}"
                )
    if issubclass(model, _Request):
        for required in definition.get("required", []):
            field = by_wire_name.get(required)
            if field is None:
                problems.append(f"{model.__name__} lacks {required}, required by {name}")
            elif not field.is_required() and field.default is None:
                problems.append(f"{model.__name__}.{required} may be left out; {name} requires it")
    return problems


REQUESTS = _models(_Request)
ANSWERS = _models(_Answer)


def test_the_vendored_spec_is_firecrackers_swagger() -> None:
    assert SPEC["swagger"] == "2.0"
    assert SPEC["info"]["title"] == "Firecracker API"
    assert {"Drive", "Vsock", "SnapshotLoadParams", "InstanceInfo"} <= set(DEFINITIONS)


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_every_endpoint_the_driver_calls_is_in_the_spec_with_the_same_models(name: str) -> None:
    endpoint = ENDPOINTS[name]
    operation = SPEC["paths"].get(endpoint.path, {}).get(endpoint.method.lower())
    assert operation is not None, f"{endpoint.method} {endpoint.path} is not in the spec"
    parameters = operation.get("parameters", [])
    bodies = [p["schema"]["$ref"].rsplit("/", 1)[1] for p in parameters if p["in"] == "body"]
    expected_body = [endpoint.body.SPEC_DEFINITION] if endpoint.body is not None else []
    assert bodies == expected_body
    placeholders = {p["name"] for p in parameters if p["in"] == "path"}
    assert placeholders == {
        part.strip("{}") for part in endpoint.path.split("/") if part.startswith("{")
    }
    responses = operation["responses"]
    if endpoint.answer is not None:
        assert responses[200]["schema"]["$ref"].endswith("/" + endpoint.answer.SPEC_DEFINITION)
    else:
        assert 204 in responses
    assert responses["default"]["schema"]["$ref"].endswith("/" + Fault.SPEC_DEFINITION)


@pytest.mark.parametrize("model", REQUESTS + ANSWERS, ids=lambda model: model.__name__)
def test_every_model_matches_its_spec_definition(model: type[BaseModel]) -> None:
    assert model_problems(model) == []


def test_every_model_is_checked_by_this_suite() -> None:
    names = {model.__name__ for model in REQUESTS + ANSWERS}
    used = {e.body.__name__ for e in ENDPOINTS.values() if e.body} | {
        e.answer.__name__ for e in ENDPOINTS.values() if e.answer
    }
    assert used <= names
    assert {"MemoryBackend", "VsockOverride", "NetworkOverride", "Fault"} <= names


class FakeDriveWithMisspelledField(_Request):
    SPEC_DEFINITION: ClassVar[str] = "Drive"

    drive_id: str
    is_root_device: bool
    path_on_host: str
    is_read_only: bool
    cache_typ: str = "Unsafe"


class FakeVmWithAnInventedState(_Request):
    SPEC_DEFINITION: ClassVar[str] = "Vm"

    state: Literal["Paused", "Stopped"]


class FakeVsockWithOptionalCid(_Request):
    SPEC_DEFINITION: ClassVar[str] = "Vsock"

    guest_cid: int | None = None
    uds_path: str


def test_the_checker_catches_a_misspelled_field_an_invented_enum_and_a_missing_required() -> None:
    assert model_problems(FakeDriveWithMisspelledField) == [
        "FakeDriveWithMisspelledField.cache_typ is not a field of Drive"
    ]
    assert model_problems(FakeVmWithAnInventedState) == [
        "FakeVmWithAnInventedState.state allows {'Stopped'} outside the spec's enum "
        "['Paused', 'Resumed']"
    ]
    assert model_problems(FakeVsockWithOptionalCid) == [
        "FakeVsockWithOptionalCid.guest_cid may be left out; Vsock requires it"
    ]
    assert spec_errors("Drive", {"drive_id": "x", "is_root_device": False, "cache_typ": "x"})


def _settings(**overrides: Any) -> MachineSettings:
    values: dict[str, Any] = {
        "vcpus": 2,
        "memory_mb": 1024,
        "kernel": "/images/vmlinux",
        "initramfs": "/images/initramfs.cpio.gz",
        "rootfs": "/images/rootfs.ext4",
        "data_disk": "/data/vms/pvm-prj_1/data.ext4",
        "vsock_socket": "/run/projectvm-fc/pvm-0123456789/v.sock",
        "log_path": "/run/projectvm-fc/pvm-0123456789/firecracker.log",
    }
    values.update(overrides)
    return MachineSettings(**values)


TAP = TapPlan(
    name="pvm0123456789",
    host=ipaddress.IPv4Interface("172.30.0.1/30"),
    guest=ipaddress.IPv4Address("172.30.0.2"),
    guest_mac="06:00:ac:1e:00:02",
)


@pytest.mark.parametrize(
    "settings",
    [
        _settings(),
        _settings(tap=TAP, metrics_path="/run/m.json", log_level="Debug", vcpus=1),
    ],
    ids=["no network", "egress and metrics"],
)
def test_every_configuration_payload_validates_against_the_spec(settings: MachineSettings) -> None:
    calls = configuration_calls(settings)
    for call in calls:
        endpoint = ENDPOINTS[call.name]
        assert type(call.body) is endpoint.body
        assert spec_errors(endpoint.body.SPEC_DEFINITION, call.body.payload()) == [], call
    names = [call.name for call in calls]
    assert ("network_interface" in names) == (settings.tap is not None)
    assert names.index("machine_config") < names.index("boot_source") < names.index("vsock")


def test_snapshot_action_and_state_payloads_validate_against_the_spec() -> None:
    payloads: list[_Request] = [
        SnapshotCreateParams(snapshot_path="/s/vm.state", mem_file_path="/s/vm.mem"),
        SnapshotLoadParams(
            snapshot_path="/s/vm.state",
            mem_backend=MemoryBackend(backend_path="/s/vm.mem"),
            resume_vm=True,
            vsock_override=VsockOverride(uds_path="/run/v.sock"),
            network_overrides=[NetworkOverride(iface_id="eth0", host_dev_name="pvm01")],
        ),
        InstanceActionInfo(action_type="InstanceStart"),
        InstanceActionInfo(action_type="SendCtrlAltDel"),
        Vm(state="Paused"),
        Vm(state="Resumed"),
    ]
    for body in payloads:
        assert spec_errors(body.SPEC_DEFINITION, body.payload()) == [], body


def test_optional_fields_are_left_out_so_older_releases_accept_the_body() -> None:
    load = SnapshotLoadParams(
        snapshot_path="/s/vm.state", mem_backend=MemoryBackend(backend_path="/s/vm.mem")
    )
    assert load.payload() == {
        "snapshot_path": "/s/vm.state",
        "mem_backend": {"backend_type": "File", "backend_path": "/s/vm.mem"},
        "resume_vm": False,
    }
