"""The MCP tools, one per operation of the core, generated from its request model.

A tool's input schema is its request model's fields, its description the model's docstring,
its output schema the operation's result model, and its annotations follow from the operation
table. A call is validated by the request model, served by ``ProjectService.call`` as the
calling agent, and ProjectVM's own errors become tool errors whose text says what happened and
what to do next.
"""

from __future__ import annotations

import inspect
import logging
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field, ValidationError
from pydantic.fields import FieldInfo

from guest_runtime.errors import ProjectVMError
from server.core.service import ENDPOINTS, Endpoint
from server.domain.invalid import describe
from server.domain.operations import Effect, Operation, spec_of
from server.surfaces.mcp.identity import AppState, caller_of

__all__ = ["annotations_of", "register_tools"]

log = logging.getLogger("projectvm.tools")

# (read-only, destructive, idempotent) per effect; destructive means nothing for reads.
_HINTS: dict[Effect, tuple[bool, bool | None, bool]] = {
    Effect.READ: (True, None, True),
    Effect.CREATE: (False, False, False),
    Effect.UPDATE: (False, False, True),
    Effect.REMOVE: (False, True, True),
    Effect.CHANGE: (False, True, False),
    Effect.COMMAND: (False, True, False),
}


def annotations_of(operation: Operation) -> ToolAnnotations:
    effect = spec_of(operation).effect
    read_only, destructive, idempotent = _HINTS[effect]
    return ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=effect == Effect.COMMAND,
    )


def _parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    """A keyword parameter carrying the field's type, constraints and description."""
    annotation: Any = Annotated[
        (field.annotation, *field.metadata, Field(description=field.description))
    ]
    default = (
        inspect.Parameter.empty
        if field.is_required()
        else field.get_default(call_default_factory=True)
    )
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def _validation_message(operation: Operation, err: ValidationError) -> str:
    return f"invalid arguments for {operation}: {describe(err)}; fix them and call again"


def _tool(endpoint: Endpoint) -> Any:
    operation = endpoint.operation

    async def tool(ctx: Context[AppState], **arguments: Any) -> BaseModel:
        step = 0

        async def progress(message: str) -> None:
            nonlocal step
            step += 1
            await ctx.report_progress(step, None, message)

        try:
            request = endpoint.request.model_validate(arguments)
        except ValidationError as err:
            raise ToolError(_validation_message(operation, err)) from None
        state, caller = caller_of(ctx.request_context, operation, progress)
        try:
            return await state.service.call(caller, request)
        except ProjectVMError as err:
            raise ToolError(str(err)) from err

    fields = endpoint.request.model_fields
    context = inspect.Parameter(
        "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Context[AppState]
    )
    parameters = [context, *(_parameter(name, field) for name, field in fields.items())]
    tool.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        parameters, return_annotation=endpoint.result
    )
    tool.__annotations__ = {
        "ctx": Context[AppState],
        **{p.name: p.annotation for p in parameters[1:]},
        "return": endpoint.result,
    }
    tool.__name__ = tool.__qualname__ = operation.value
    tool.__doc__ = inspect.cleandoc(endpoint.request.__doc__ or operation.value)
    return tool


def register_tools(mcp: MCPServer) -> None:
    for endpoint in ENDPOINTS.values():
        mcp.add_tool(
            _tool(endpoint),
            name=endpoint.operation.value,
            description=inspect.cleandoc(endpoint.request.__doc__ or ""),
            annotations=annotations_of(endpoint.operation),
            structured_output=True,
        )
