"""The project's allowed_tools govern REST as they govern MCP: named per operation, consulted
for every operation whatever the surface."""

from __future__ import annotations

import httpx
import pytest

from server.domain.operations import OPERATIONS, Operation
from tests.rest.conftest import MakeProject
from tests.rest.samples import samples

pytestmark = pytest.mark.anyio

REFUSAL = "does not permit the tool"


async def test_the_policy_is_consulted_for_every_operation_over_rest(
    alice_rest: httpx.AsyncClient, rest_projects: MakeProject
) -> None:
    """For each operation X: a project whose allowed tools are all but X refuses X over REST
    with a 403 naming it, and only X."""
    project_id = await rest_projects("policy")
    assert (await alice_rest.put(f"/projects/{project_id}/files/a.txt", content=b"a")).is_success
    ran = await alice_rest.post(f"/projects/{project_id}/executions", json={"command": "true"})
    calls = samples(project_id, ran.json()["execution_id"])
    everything = [op.value for op in Operation]
    checked = 0
    for excluded, spec in OPERATIONS.items():
        if spec.level is None or spec.always_allowed:
            continue
        allowed = [name for name in everything if name != excluded.value]
        settings = await alice_rest.patch(
            f"/projects/{project_id}/settings", json={"allowed_tools": allowed}
        )
        assert settings.status_code == 200, settings.text
        for operation, sample in calls.items():
            if OPERATIONS[operation].level is None:
                continue
            ends_project = operation in (Operation.DELETE_PROJECT, Operation.STOP_PROJECT)
            if ends_project and operation != excluded:
                continue  # would end the project under the test; only called when refused
            response = await sample.send(alice_rest)
            if operation == excluded:
                assert response.status_code == 403, (excluded, response.text)
                assert REFUSAL in response.json()["detail"], (excluded, response.text)
                assert response.json()["operation"] == excluded.value
                checked += 1
            else:
                assert REFUSAL not in response.text, (excluded, operation, response.text)
    restored = await alice_rest.patch(
        f"/projects/{project_id}/settings", json={"allowed_tools": []}
    )
    assert restored.status_code == 200
    assert checked == sum(
        1 for spec in OPERATIONS.values() if spec.level is not None and not spec.always_allowed
    )
