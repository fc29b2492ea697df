"""The fly driver's pure parts: error translation, sizes, names, auth, config, the fake's spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.fakes.fake_fly import SPEC_DEVIATIONS, SPEC_PATH, SpecValidator, SpecViolation
from vm_drivers.base import DriverContext, VMStatus
from vm_drivers.config import FlyDriverConfig, parse_driver_config
from vm_drivers.errors import (
    DriverConfigError,
    DriverError,
    DriverTimeout,
    DriverUnavailable,
    VMNotFound,
    VMOperationFailed,
    VMResourceExhausted,
)
from vm_drivers.fly.api import FlyAPIError, RetryPolicy, authorization_header
from vm_drivers.fly.driver import FlyDriver
from vm_drivers.fly.errors import translate_fly_error
from vm_drivers.fly.guest import guest_for, preset_name
from vm_drivers.fly.machines import machine_status
from vm_drivers.registry import available_driver_names

SHARED_SPEC = Path(__file__).resolve().parents[2].parent / "shared/specs/fly-machines-api.json"


def error(status: int, fly_status: str = "") -> FlyAPIError:
    return FlyAPIError(
        "GET", "/apps/x", status, "it went wrong", fly_status=fly_status, request_id="r1"
    )


@pytest.mark.parametrize("status", [0, *range(400, 600)])
def test_every_status_translates_into_the_driver_error_tree(status: int) -> None:
    translated = translate_fly_error(error(status), "doing a thing")
    assert isinstance(translated, DriverError)
    assert "r1" in str(translated)  # the fly-request-id travels along
    assert ";" in str(translated)  # ... and a next step


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0, DriverUnavailable),
        (400, VMOperationFailed),
        (401, DriverUnavailable),
        (403, DriverUnavailable),
        (404, VMNotFound),
        (408, DriverTimeout),
        (409, VMOperationFailed),
        (412, VMOperationFailed),
        (422, DriverConfigError),
        (429, VMResourceExhausted),
        (418, VMOperationFailed),
        (500, VMOperationFailed),
        (503, VMOperationFailed),
    ],
)
def test_each_status_class_maps_to_its_error(status: int, expected: type[DriverError]) -> None:
    assert type(translate_fly_error(error(status), "x")) is expected


def test_a_token_refusal_says_how_to_make_a_token() -> None:
    assert "fly tokens create org" in str(translate_fly_error(error(401), "x"))


def test_insufficient_capacity_suggests_another_region_whatever_the_status() -> None:
    for status in (412, 500):
        translated = translate_fly_error(error(status, "insufficient_capacity"), "x")
        assert isinstance(translated, VMResourceExhausted)
        assert "another region" in str(translated)


@pytest.mark.parametrize(
    ("cpus", "memory", "kind", "expected"),
    [
        (1, 1024, "shared", ("shared-cpu-1x", 1, 1024)),
        (0.5, 100, "shared", ("shared-cpu-1x", 1, 256)),
        (1, 1000, "shared", ("shared-cpu-1x", 1, 1024)),
        (2, 256, "shared", ("shared-cpu-2x", 2, 512)),
        (1, 3000, "shared", ("shared-cpu-2x", 2, 3072)),
        (3, 2048, "shared", ("shared-cpu-4x", 4, 2048)),
        (1, 2048, "performance", ("performance-1x", 1, 2048)),
        (2, 9000, "performance", ("performance-2x", 2, 9216)),
    ],
)
def test_guest_sizes_round_up_to_what_fly_sells(
    cpus: float, memory: int, kind: str, expected: tuple[str, int, int]
) -> None:
    guest = guest_for(cpus, memory, kind)  # type: ignore[arg-type]
    assert (preset_name(guest), guest.cpus, guest.memory_mb) == expected


def test_a_size_fly_does_not_sell_is_refused_with_the_limits() -> None:
    with pytest.raises(DriverConfigError, match="at most 8 CPUs"):
        guest_for(1, 20_000, "shared")


def test_tokens_get_the_scheme_fly_expects() -> None:
    assert authorization_header("abc") == "Bearer abc"
    assert authorization_header("fm2_xyz") == "FlyV1 fm2_xyz"
    assert authorization_header("FlyV1 fm2_xyz") == "FlyV1 fm2_xyz"
    assert authorization_header(" Bearer abc ") == "Bearer abc"


def test_backoff_grows_and_respects_the_rate_limit_floor() -> None:
    policy = RetryPolicy(initial_s=0.1, max_s=1, jitter=0, rate_limit_floor_s=1.5)
    assert [policy.delay(n, error(503)) for n in range(5)] == [0.1, 0.2, 0.4, 0.8, 1]
    assert policy.delay(0, error(429)) == 1.5
    late = FlyAPIError("GET", "/", 429, "slow down", retry_after_s=4)
    assert policy.delay(0, late) == 4


def test_machine_states_map_to_vm_statuses() -> None:
    assert machine_status("started") == VMStatus.RUNNING
    assert machine_status("suspended") == VMStatus.STOPPED
    assert machine_status("starting") == VMStatus.CREATING
    assert machine_status("failed") == VMStatus.FAILED
    assert machine_status("something-new") == VMStatus.FAILED


def test_app_names_are_valid_and_lead_back_to_their_vm(tmp_path: Path) -> None:
    config = FlyDriverConfig(api_token=SecretStr("t"))
    driver = FlyDriver(config, DriverContext(data_dir=tmp_path, instance_id="0a1b2c3d4e5f"))
    app = driver.app_name("pvm-prj_0123456789abcdef")
    assert app == "pvm-0a1b2c3d4e5f-prj-0123456789abcdef"
    assert driver._parse_app_name(app) == ("0a1b2c3d4e5f", "pvm-prj_0123456789abcdef")
    assert driver._parse_app_name("someone-elses-app") is None
    with pytest.raises(VMNotFound):
        driver.app_name("pvm-" + "x" * 60)
    with pytest.raises(VMNotFound):
        driver.app_name("not-ours")


def test_the_config_is_in_the_union_and_never_shows_the_token() -> None:
    assert "fly" in available_driver_names()
    config = parse_driver_config({"type": "fly", "api_token": "very-secret-token"})
    assert isinstance(config, FlyDriverConfig)
    assert "very-secret-token" not in repr(config)
    assert "very-secret-token" not in config.model_dump_json()
    for name, field in FlyDriverConfig.model_fields.items():
        assert name == "type" or field.description, f"{name} has no description"


@pytest.mark.anyio
async def test_without_a_token_the_driver_is_unavailable_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLY_API_TOKEN", raising=False)
    driver = FlyDriver(FlyDriverConfig(), DriverContext(data_dir=tmp_path, instance_id="abc"))
    availability = await driver.probe()
    assert not availability.usable
    assert "FLY_API_TOKEN" in availability.reason
    assert "fly tokens create org" in availability.reason


def test_the_base_url_comes_from_fly_flaps_base_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = DriverContext(data_dir=tmp_path, instance_id="abc")
    monkeypatch.setenv("FLY_FLAPS_BASE_URL", "http://machines.internal:4280")
    assert FlyDriver(FlyDriverConfig(), context).base_url == "http://machines.internal:4280"
    configured = FlyDriverConfig(api_base_url="http://other:1")
    assert FlyDriver(configured, context).base_url == "http://other:1"
    monkeypatch.delenv("FLY_FLAPS_BASE_URL")
    assert FlyDriver(FlyDriverConfig(), context).base_url == "https://api.machines.dev"


# -- the fake's own spec handling -------------------------------------------------------------


def test_the_vendored_spec_is_the_shared_one() -> None:
    if not SHARED_SPEC.exists():
        pytest.skip(f"no shared spec beside the repository ({SHARED_SPEC})")
    assert json.loads(SPEC_PATH.read_text()) == json.loads(SHARED_SPEC.read_text())


def test_every_deviation_is_documented_and_its_patch_applies() -> None:
    for deviation in SPEC_DEVIATIONS:
        assert all((deviation.topic, deviation.spec_says, deviation.wire_does, deviation.source))
    validator = SpecValidator()
    ids = {operation.operation_id for operation in validator.operations}
    assert {"Machines_suspend", "Secrets_update", "IPAssignments_create"} <= ids


def test_the_validator_reads_objects_strictly() -> None:
    validator = SpecValidator()
    with pytest.raises(SpecViolation, match="surprise"):
        validator.check_request(
            "POST", "/v1/apps/a/volumes", [], json.dumps({"name": "w", "surprise": 1}).encode()
        )
    with pytest.raises(SpecViolation, match="required"):
        validator.check_request("GET", "/v1/apps", [], b"")
    with pytest.raises(SpecViolation, match="not one of"):
        validator.check_request("GET", "/v1/apps/a/machines/m/wait", [("state", "asleep")], b"")
    operation, _ = validator.match("GET", "/v1/apps/a/machines/m")
    with pytest.raises(SpecViolation, match="may not answer 201"):
        validator.check_response(operation, 201, {})
    with pytest.raises(SpecViolation):
        validator.check_response(operation, 200, {"id": "m", "colour": "blue"})
