"""Where the March 2024 Machines API spec and the live API are known to disagree.

The fake validates every request and response against ``fly-machines-api.json`` (a copy of
``shared/specs/fly-machines-api.json``), read strictly: an object may carry only the properties
the spec names. Where the live wire is known to differ (research notes §A5, §A8, §A11), the
fake follows the wire; each such place is one entry below, with its source, and is applied to
the spec as a patch before validation. Entries without a patch are differences the driver steers
clear of (it never sends what they describe), kept here so nobody relies on the spec there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["SPEC_DEVIATIONS", "Deviation", "patched_spec"]

Spec = dict[str, Any]

MACHINE = "/apps/{app_name}/machines/{machine_id}"
ERROR = {"$ref": "#/definitions/ErrorResponse"}
APP_PARAM = {"name": "app_name", "in": "path", "required": True, "type": "string"}
MACHINE_PARAM = {"name": "machine_id", "in": "path", "required": True, "type": "string"}
LEASE_ENVELOPE = {
    "type": "object",
    "properties": {"status": {"type": "string", "enum": ["success"]}, "data": {}},
    "required": ["status", "data"],
}
LEASE_ERROR = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["error"]},
        "message": {"type": "string"},
        "code": {"type": "string"},
    },
    "required": ["status", "message"],
}


@dataclass(frozen=True)
class Deviation:
    topic: str
    spec_says: str
    wire_does: str
    source: str
    patch: Callable[[Spec], None] | None = None


def _add_operation(path: str, method: str, operation: dict[str, Any]) -> Callable[[Spec], None]:
    def patch(spec: Spec) -> None:
        spec["paths"].setdefault(path, {})[method] = operation

    return patch


def _suspend(spec: Spec) -> None:
    _add_operation(
        f"{MACHINE}/suspend",
        "post",
        {
            "operationId": "Machines_suspend",
            "parameters": [APP_PARAM, MACHINE_PARAM],
            "responses": {"200": {"description": "OK"}, "400": {"schema": ERROR}},
        },
    )(spec)


def _secrets(spec: Spec) -> None:
    body = {
        "type": "object",
        "properties": {"values": {"type": "object", "additionalProperties": {"type": "string"}}},
        "required": ["values"],
    }
    _add_operation(
        "/apps/{app_name}/secrets",
        "post",
        {
            "operationId": "Secrets_update",
            "parameters": [
                APP_PARAM,
                {"name": "request", "in": "body", "required": True, "schema": body},
            ],
            "responses": {"200": {"description": "OK"}},
        },
    )(spec)


def _ip_assignments(spec: Spec) -> None:
    body = {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["shared_v4", "v6", "private_v6"]},
            "region": {"type": "string"},
            "network": {"type": "string"},
            "org_slug": {"type": "string"},
        },
        "required": ["type"],
    }
    answer = {
        "type": "object",
        "properties": {
            "ip": {"type": "string"},
            "region": {"type": "string"},
            "shared": {"type": "boolean"},
            "created_at": {"type": "string"},
        },
    }
    _add_operation(
        "/apps/{app_name}/ip_assignments",
        "post",
        {
            "operationId": "IPAssignments_create",
            "parameters": [
                APP_PARAM,
                {"name": "request", "in": "body", "required": True, "schema": body},
            ],
            "responses": {"200": {"schema": answer}},
        },
    )(spec)


def _metadata_filter(spec: Spec) -> None:
    spec["paths"]["/apps/{app_name}/machines"]["get"]["x-pattern-params"] = [
        r"metadata\.[A-Za-z0-9_\-]+"
    ]


def _app_name_field(spec: Spec) -> None:
    spec["definitions"]["CreateAppRequest"]["properties"]["name"] = {"type": "string"}


def _duration_strings(spec: Spec) -> None:
    original = spec["definitions"]["fly.Duration"]
    spec["definitions"]["fly.Duration"] = {
        "anyOf": [original, {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h)$"}]
    }


def _lease_envelopes(spec: Spec) -> None:
    lease = spec["paths"][f"{MACHINE}/lease"]
    lease["post"]["responses"]["200"]["schema"] = LEASE_ENVELOPE
    lease["post"]["responses"]["409"] = {"description": "held", "schema": LEASE_ERROR}
    lease["get"]["responses"]["200"]["schema"] = LEASE_ENVELOPE
    lease["delete"]["responses"]["200"]["schema"] = LEASE_ENVELOPE


def _wait_states(spec: Spec) -> None:
    wait = spec["paths"][f"{MACHINE}/wait"]["get"]
    for parameter in wait["parameters"]:
        if parameter["name"] == "state":
            parameter["enum"] = [
                "started",
                "stopped",
                "destroyed",
                "suspended",
                "failed",
                "settled",
            ]
    wait["responses"]["408"] = {"description": "timed out", "schema": ERROR}


def _app_delete_force(spec: Spec) -> None:
    spec["paths"]["/apps/{app_name}"]["delete"]["parameters"].append(
        {"name": "force", "in": "query", "type": "boolean"}
    )


def _name_taken(spec: Spec) -> None:
    spec["definitions"]["main.statusCode"]["enum"].append("name_taken")


def _autostop_strings(spec: Spec) -> None:
    spec["definitions"]["fly.MachineService"]["properties"]["autostop"] = {
        "anyOf": [{"type": "boolean"}, {"type": "string", "enum": ["off", "stop", "suspend"]}]
    }


SPEC_DEVIATIONS: tuple[Deviation, ...] = (
    # Suspend shipped after the spec was cut; the driver sleeps VMs with it.
    Deviation(
        "POST /apps/{app}/machines/{id}/suspend",
        "absent",
        "exists; no body; answers 200",
        "research §A5, §A11 (current OpenAPI mirror, fly-go)",
        _suspend,
    ),
    # App secrets over the Machines API (flyctl used GraphQL before).
    Deviation(
        "POST /apps/{app}/secrets",
        "absent",
        'body {"values": {NAME: value}}',
        "research §A3 (current spec Secrets_update, fly-go flaps_secrets.go)",
        _secrets,
    ),
    Deviation(
        "POST /apps/{app}/ip_assignments",
        "absent",
        'body {"type": "shared_v4" | "v6" | "private_v6", "region"?, "network"?, "org_slug"?}',
        "research §A3 (fly-go flaps_ip_assignments.go; current spec assignIPRequest)",
        _ip_assignments,
    ),
    Deviation(
        "GET /apps/{app}/machines?metadata.{key}=",
        "no metadata filter",
        "filters Machines on config.metadata",
        "research §A3, §A11 (machines-resource docs)",
        _metadata_filter,
    ),
    Deviation(
        "CreateAppRequest.name",
        "app_name only",
        "name accepted too (the driver sends both, equal)",
        "research §A2, §A11 (current spec, fly-go)",
        _app_name_field,
    ),
    # StopRequest.timeout, StopConfig.timeout and check intervals.
    Deviation(
        "fly.Duration",
        'an object {"time.Duration": int}',
        'a Go duration string such as "30s"',
        "research §A5, §A11 (superfly/docs#2187, current spec)",
        _duration_strings,
    ),
    Deviation(
        "lease responses",
        "a flat Lease",
        '{"status": "success", "data": {...}}; a held lease answers 409 '
        '{"status": "error", "message", "code"}',
        "research §A8 (docs partials _machines_lease_create_resp.erb, _lease_resp.erb)",
        _lease_envelopes,
    ),
    Deviation(
        "GET .../wait",
        "state in started|stopped|destroyed; no 408",
        "also suspended|failed|settled; 408 with an ErrorResponse on timeout; timeout 1..60",
        "research §A5 (superfly/flyctl#1760, superfly/docs#2430)",
        _wait_states,
    ),
    Deviation(
        "DELETE /apps/{app}?force=true",
        "no parameters",
        "force stops the app's Machines first",
        "research §A2 (apps-resource docs)",
        _app_delete_force,
    ),
    Deviation(
        "ErrorResponse.status",
        "unknown | insufficient_capacity",
        "also name_taken (422 on a taken app name)",
        "research §A2 (fly-go flaps_error.go)",
        _name_taken,
    ),
    Deviation(
        "MachineService.autostop",
        "boolean",
        '"off" | "stop" | "suspend" (booleans still accepted)',
        "research §A5, §A11",
        _autostop_strings,
    ),
    # Differences the driver avoids; no patch, so the fake refuses the spec-only form too.
    Deviation(
        "lease release",
        "no header",
        "needs the fly-machine-lease-nonce header (the fake enforces it)",
        "research §A8, §A11",
    ),
    Deviation(
        "POST .../exec response",
        "a string of raw bytes",
        "JSON {stdout, stderr, exit_code, exit_signal} (the driver does not use exec)",
        "research §A6",
    ),
    Deviation(
        "POST .../metadata/{key}",
        "no body",
        'body {"value": ...} (the driver keeps metadata in config.metadata)',
        "research §A5",
    ),
    Deviation(
        "DELETE .../machines/{id}",
        "force=true",
        "fly-go sends kill=true; the driver sends force, as spec and docs say",
        "research §A5",
    ),
    Deviation(
        "volume update verb",
        "POST",
        "PUT (the driver does not update volumes)",
        "research §A4, §A11",
    ),
)


def patched_spec(spec: Spec) -> Spec:
    """The spec with every deviation's patch applied (the input is not changed)."""
    import copy

    patched = copy.deepcopy(spec)
    for deviation in SPEC_DEVIATIONS:
        if deviation.patch is not None:
            deviation.patch(patched)
    return patched
