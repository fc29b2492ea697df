"""What every REST handler shares: the service, the calling agent, and one guarded call.

A call is ``service.call(Caller(agent, "rest", operation), request)``, the same entry and so the
same policy as an MCP tool. It is cancelled when the client goes away (a command that nobody
waits for is killed, as when an MCP client cancels), and ProjectVM's errors become problems.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from guest_runtime.errors import ProjectVMError
from server.core.caller import Caller
from server.core.requests import Request as OperationRequest
from server.core.service import ProjectService
from server.domain.operations import Operation
from server.surfaces.http.auth import identity_of
from server.surfaces.http.problems import Problem, problem_of, problem_response
from server.surfaces.http.service_source import ServiceSource

__all__ = ["ClientGone", "RestApi", "json_response"]

JSON = "application/json"


class ClientGone(Exception):
    """The client disconnected before the answer was ready; nobody is left to answer."""


def json_response(
    result: BaseModel | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    if isinstance(result, BaseModel):
        body = result.model_dump_json()
    else:
        body = json.dumps(result, ensure_ascii=False)
    return Response(body, status_code=status, media_type=JSON, headers=headers)


class RestApi:
    def __init__(self, service_source: ServiceSource) -> None:
        self._service_source = service_source

    @property
    def service(self) -> ProjectService:
        service = self._service_source()
        if service is None:
            raise Problem(
                503, "starting", "Not ready",
                "the server is starting or shutting down; retry in a moment",
            )  # fmt: skip
        return service

    @staticmethod
    def caller(request: Request, operation: Operation) -> Caller:
        identity = identity_of(request.scope)
        if identity is None:  # the authentication middleware lets no such request through
            raise Problem(401, "unauthenticated", "Unauthenticated", "no agent identity")
        return Caller(identity.agent_id, "rest", operation)

    async def call(
        self, request: Request, operation: Operation, model: OperationRequest
    ) -> BaseModel:
        """``service.call`` as the request's agent, cancelled if the client disconnects.

        Only for requests whose body has been read: the watch takes over the receive channel.
        """
        service, caller = self.service, self.caller(request, operation)
        result: BaseModel | None = None
        failure: Exception | None = None
        async with anyio.create_task_group() as group:

            async def watch_disconnect() -> None:
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(watch_disconnect)
            try:
                result = await service.call(caller, model)
            except Exception as err:  # raised as itself, not inside an exception group
                failure = err
            group.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if result is None:
            raise ClientGone(f"the client left during {operation}")
        return result

    @staticmethod
    async def guarded(
        request: Request, operation: Operation, handler: Callable[[], Awaitable[Response]]
    ) -> Response:
        """Run a handler; errors become problem responses."""
        instance = request.url.path
        try:
            return await handler()
        except Problem as problem:
            return problem_response(problem, instance)
        except ProjectVMError as err:
            refusal = problem_of(err, operation.value)
            headers = {}
            sha = refusal.extensions.get("current_sha256")
            if refusal.status == 412 and isinstance(sha, str):
                headers["ETag"] = f'"{sha}"'
            return problem_response(refusal, instance, headers)
        except ClientGone:
            return Response(status_code=499)
