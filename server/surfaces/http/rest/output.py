"""A command's output over REST: one JSON answer, or a stream of NDJSON chunks to the end.

``GET /executions/{id}/output?since=N&wait_s=S`` answers like ``read_command_output``. With
``Accept: application/x-ndjson`` it follows the command instead: one line per piece of output
(a ``CommandOutput`` with the new text and its ``next_since``) until the line that says
``finished: true``. Every piece is its own ``read_command_output`` call, so access is checked
again each time (a member removed meanwhile gets nothing more), and so is the credential (a
replaced token's stream ends).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from guest_runtime.errors import ProjectVMError
from server.core.requests import ReadCommandOutput
from server.core.results import CommandOutput
from server.domain.errors import Unauthenticated
from server.domain.operations import Operation
from server.surfaces.http.auth import identity_of
from server.surfaces.http.problems import problem_of
from server.surfaces.http.rest.api import RestApi, json_response
from server.surfaces.http.rest.binding import bind
from server.surfaces.http.rest.routes import Route

__all__ = ["NDJSON", "read_output"]

NDJSON = "application/x-ndjson"
# How long one underlying call waits for more output before asking again.
FOLLOW_WAIT_S = 20.0


def wants_ndjson(request: Request) -> bool:
    return NDJSON in request.headers.get("accept", "")


async def read_output(api: RestApi, route: Route, request: Request) -> Response:
    model = await bind(request, route)
    assert isinstance(model, ReadCommandOutput)
    if not wants_ndjson(request):
        return json_response(await api.call(request, route.operation, model))
    service = api.service
    caller = api.caller(request, Operation.READ_COMMAND_OUTPUT)
    identity = identity_of(request.scope)
    still_valid = identity.still_valid if identity is not None else None
    # The first piece is read before answering, so a bad id or a refusal is a plain problem.
    first = await service.call(caller, model)
    assert isinstance(first, CommandOutput)

    async def lines() -> AsyncIterator[str]:
        piece = first
        while True:
            if piece.stdout or piece.stderr or piece.finished:
                yield piece.model_dump_json() + "\n"
            if piece.finished:
                return
            follow = ReadCommandOutput(
                execution_id=model.execution_id, since=piece.next_since, wait_s=FOLLOW_WAIT_S
            )
            try:
                if still_valid is not None and not await still_valid():
                    raise Unauthenticated(
                        f"the credential this stream was opened with no longer stands for "
                        f"{caller.agent_id} (its token was replaced or the agent removed); "
                        "follow the output again with a current token"
                    )
                result = await service.call(caller, follow)
            except ProjectVMError as err:
                # Headers are gone: the stream ends with the problem as its last line.
                problem = problem_of(err, route.operation.value)
                yield json.dumps({"problem": problem.body(request.url.path)}) + "\n"
                return
            assert isinstance(result, CommandOutput)
            piece = result

    return StreamingResponse(lines(), media_type=NDJSON)
