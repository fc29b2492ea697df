"""Who is calling over HTTP: authentication for every request but the public few.

An identity comes from a :class:`CredentialSource`. Today that is the agent's bearer token
(``Authorization: Bearer``); a session cookie for the dashboard plugs in as another source.
A credential a browser sends by itself (a cookie) is only good for a mutating request that
also proves it came from our own pages: such a source returns an identity with a
``csrf_check``, and the middleware refuses a POST, PUT, PATCH or DELETE that fails it.

A missing or unknown credential is a 401 before any further processing; a known one leaves
the :class:`Identity` (and, for the MCP surface, the agent's id) in the request's state, and
makes the agent the request's authenticated user. The MCP SDK binds each session to the user
whose request opened it and answers anyone else's use of its id as it answers an unknown
session (404): another agent's valid token cannot join, listen to, cancel in, or end an
agent's session. WebSocket handshakes pass through to their endpoint, which authenticates
with the subprotocol header or a ticket (see ``ws``) and can ask the same sources.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.surfaces.http.problems import PROBLEM_JSON, Problem
from server.surfaces.mcp.identity import AGENT_STATE_KEY

__all__ = [
    "IDENTITY_STATE_KEY",
    "SAFE_METHODS",
    "Authenticate",
    "Authenticator",
    "BearerTokens",
    "CredentialSource",
    "Identity",
    "StillValid",
    "identity_of",
    "send_json",
]

IDENTITY_STATE_KEY = "projectvm_identity"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PROBLEM_PREFIX = "/api/"
CREATE_TOKEN_HINT = "create a token with: projectvm agents add NAME"


# Whether the credential an identity was proven with still stands (not replaced or revoked).
StillValid = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Identity:
    agent_id: str
    via: Literal["bearer", "ticket", "session"]
    # For credentials a browser attaches by itself: does this request prove it came from us?
    csrf_check: Callable[[Headers], bool] | None = None
    # For what outlives the request that proved it (a WebSocket, a stream): asked again later.
    still_valid: StillValid | None = None


class CredentialSource(Protocol):
    async def identify(self, headers: Headers) -> Identity | None:
        """The identity these headers prove, or ``None`` when they carry no such credential."""
        ...


class BearerTokens:
    """``Authorization: Bearer <token>``, resolved to the agent the token was issued to."""

    def __init__(self, resolve: Callable[[str], Awaitable[str | None]]) -> None:
        self.resolve = resolve

    async def identify(self, headers: Headers) -> Identity | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return await self.token(token.strip())

    async def token(self, token: str) -> Identity | None:
        agent = await self.resolve(token)
        if agent is None:
            return None

        async def still_valid() -> bool:  # the token may be replaced or its agent removed
            return await self.resolve(token) == agent

        return Identity(agent, "bearer", still_valid=still_valid)


class Authenticator:
    """The credential sources, asked in order; the bearer token first."""

    def __init__(self, bearer: BearerTokens, others: Sequence[CredentialSource] = ()) -> None:
        self.bearer = bearer
        self.sources: list[CredentialSource] = [bearer, *others]

    async def identify(self, headers: Headers) -> Identity | None:
        for source in self.sources:
            identity = await source.identify(headers)
            if identity is not None:
                return identity
        return None


def identity_of(scope: Scope) -> Identity | None:
    identity = scope.get("state", {}).get(IDENTITY_STATE_KEY)
    return identity if isinstance(identity, Identity) else None


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    media_type: bytes = b"application/json",
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", media_type), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _refuse(scope: Scope, send: Send, status: int, slug: str, detail: str) -> None:
    headers = [(b"www-authenticate", b'Bearer realm="projectvm"')] if status == 401 else []
    if scope["path"].startswith(PROBLEM_PREFIX):
        problem = Problem(status, slug, slug.replace("-", " ").capitalize(), detail)
        body = json.dumps(problem.body(scope["path"])).encode()
        await send_json(send, status, body, headers, PROBLEM_JSON.encode())
    else:
        body = json.dumps({"error": slug, "message": detail}).encode()
        await send_json(send, status, body, headers)


class Authenticate:
    """ASGI middleware: every HTTP request but the public paths must carry a credential."""

    def __init__(
        self, app: ASGIApp, authenticator: Authenticator, public_paths: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        identity = await self.authenticator.identify(headers)
        if identity is None:
            await _refuse(
                scope, send, 401, "unauthorized",
                f"send Authorization: Bearer <token>; {CREATE_TOKEN_HINT}",
            )  # fmt: skip
            return
        if (
            identity.csrf_check is not None
            and scope["method"] not in SAFE_METHODS
            and not identity.csrf_check(headers)
        ):
            await _refuse(
                scope, send, 403, "csrf-check-failed",
                "this request changes something but carries no valid CSRF token; send it "
                "from the dashboard's pages, or authenticate with a bearer token instead",
            )  # fmt: skip
            return
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        state[IDENTITY_STATE_KEY] = identity
        state[AGENT_STATE_KEY] = identity.agent_id
        # The agent is the principal (client_id) an MCP session is bound to, whatever
        # credential it came with; no secret is kept in the scope.
        scope["user"] = AuthenticatedUser(
            AccessToken(token=identity.via, client_id=identity.agent_id, scopes=[])
        )
        await self.app(scope, receive, send)
