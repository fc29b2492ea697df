"""Errors the guest agent reports to the host.

Each error has a stable ``kind`` that travels in the JSON-RPC error's ``data`` so the host can
map it to its own exception types; the message is written for the agent reading it.
"""

from __future__ import annotations

from typing import Any, Dict

# JSON-RPC 2.0 reserved codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Application errors: one code, the kind says which.
GUEST_ERROR = -32000


class GuestError(Exception):
    """An error with a kind the host understands and a message an agent can act on."""

    code = GUEST_ERROR

    def __init__(self, kind: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.data = data

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"kind": self.kind}
        data.update(self.data)
        return {"code": self.code, "message": self.message, "data": data}


class InvalidParams(GuestError):
    code = INVALID_PARAMS

    def __init__(self, message: str) -> None:
        super().__init__("invalid_params", message)
