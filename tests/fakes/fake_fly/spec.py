"""Strict validation of Machines API requests and responses against the Swagger 2.0 spec.

Paths, methods, path and query parameters, bodies (present when and only when the spec has one)
and JSON bodies against their definitions, with every object closed: a property the spec does
not name is an error. Swagger 2.0 schemas are close enough to JSON Schema draft 4 to use its
validator once ``definitions`` travel along for the ``$ref``s.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator

from .deviations import patched_spec

__all__ = ["SPEC_PATH", "Operation", "SpecValidator", "SpecViolation"]

SPEC_PATH = Path(__file__).with_name("fly-machines-api.json")
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


class SpecViolation(Exception):
    """A request or response the spec (with its known deviations) does not allow."""


@dataclass
class Operation:
    method: str
    template: str
    operation_id: str
    definition: dict[str, Any]
    pattern: re.Pattern[str] = field(repr=False)

    @property
    def parameters(self) -> list[dict[str, Any]]:
        return list(self.definition.get("parameters", []))

    def body_parameter(self) -> dict[str, Any] | None:
        return next((p for p in self.parameters if p.get("in") == "body"), None)


def _closed(schema: Any) -> Any:
    """Every object schema that lists properties allows no others (unless it says so)."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: _closed(value) for key, value in schema.items()}
    if "properties" in result and "additionalProperties" not in result:
        result["additionalProperties"] = False
    return result


def _query_value(parameter: dict[str, Any], raw: str) -> Any:
    kind = parameter.get("type", "string")
    if kind == "boolean":
        if raw not in ("true", "false"):
            raise SpecViolation(f"query parameter {parameter['name']} must be true or false")
        return raw == "true"
    if kind == "integer":
        if not re.fullmatch(r"-?[0-9]+", raw):
            raise SpecViolation(f"query parameter {parameter['name']} must be an integer")
        return int(raw)
    return raw


class SpecValidator:
    def __init__(self, path: Path = SPEC_PATH) -> None:
        document = patched_spec(json.loads(path.read_text()))
        self.base_path: str = document.get("basePath", "")
        self.definitions = _closed(document["definitions"])
        self.operations: list[Operation] = []
        for template, item in document["paths"].items():
            regex = re.escape(template)
            regex = re.sub(r"\\\{([a-z_]+)\\\}", r"(?P<\1>[^/]+)", regex)
            for method, definition in item.items():
                if method not in METHODS:
                    continue
                self.operations.append(
                    Operation(
                        method.upper(),
                        template,
                        definition.get("operationId", f"{method} {template}"),
                        definition,
                        re.compile(f"^{regex}$"),
                    )
                )

    # -- schemas --------------------------------------------------------------------------------

    def validate_schema(self, schema: dict[str, Any], value: Any, what: str) -> None:
        wrapped = {"definitions": self.definitions, "allOf": [_closed(copy.deepcopy(schema))]}
        errors = sorted(Draft4Validator(wrapped).iter_errors(value), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = "/".join(str(part) for part in first.absolute_path) or "(root)"
            raise SpecViolation(f"{what} at {where}: {first.message}")

    # -- requests -------------------------------------------------------------------------------

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]]:
        if not path.startswith(self.base_path + "/"):
            raise SpecViolation(f"{path} is outside the API's base path {self.base_path}")
        relative = path[len(self.base_path) :]
        allowed = []
        for operation in self.operations:
            found = operation.pattern.match(relative)
            if found is None:
                continue
            if operation.method == method:
                return operation, found.groupdict()
            allowed.append(operation.method)
        if allowed:
            raise SpecViolation(f"{method} {relative} is not in the spec (it has {allowed})")
        raise SpecViolation(f"no operation in the spec matches {method} {relative}")

    def check_request(
        self, method: str, path: str, query: list[tuple[str, str]], body: bytes
    ) -> tuple[Operation, dict[str, str], dict[str, Any], Any]:
        """Validate one request; return its operation, path and query values, and JSON body."""
        operation, path_values = self.match(method, path)
        declared = {p["name"]: p for p in operation.parameters if p.get("in") == "query"}
        patterns = [re.compile(f"^{p}$") for p in operation.definition.get("x-pattern-params", [])]
        values: dict[str, Any] = {}
        for name, raw in query:
            if name in values:
                raise SpecViolation(f"query parameter {name} is repeated")
            if name in declared:
                parameter = declared[name]
                values[name] = _query_value(parameter, raw)
                if "enum" in parameter and values[name] not in parameter["enum"]:
                    raise SpecViolation(
                        f"query parameter {name}={raw} is not one of {parameter['enum']}"
                    )
            elif any(p.match(name) for p in patterns):
                values[name] = raw
            else:
                raise SpecViolation(
                    f"query parameter {name} is not in the spec for {operation.operation_id}"
                )
        for name, parameter in declared.items():
            if parameter.get("required") and name not in values:
                raise SpecViolation(f"query parameter {name} is required")
        body_parameter = operation.body_parameter()
        payload: Any = None
        if body:
            if body_parameter is None:
                raise SpecViolation(f"{operation.operation_id} takes no body, got {body[:80]!r}")
            try:
                payload = json.loads(body)
            except ValueError as err:
                raise SpecViolation(f"the body is not JSON ({err})") from None
            self.validate_schema(
                body_parameter["schema"], payload, f"{operation.operation_id} body"
            )
        elif body_parameter is not None and body_parameter.get("required"):
            raise SpecViolation(f"{operation.operation_id} requires a body")
        return operation, path_values, values, payload

    # -- responses ------------------------------------------------------------------------------

    def check_response(self, operation: Operation, status: int, payload: Any) -> None:
        responses = operation.definition.get("responses", {})
        answer = responses.get(str(status))
        if answer is None:
            if status < 400:
                raise SpecViolation(
                    f"{operation.operation_id} may not answer {status} (spec: {sorted(responses)})"
                )
            answer = {"schema": {"$ref": "#/definitions/ErrorResponse"}}
        schema = answer.get("schema")
        if schema is not None:
            self.validate_schema(schema, payload, f"{operation.operation_id} answer {status}")
