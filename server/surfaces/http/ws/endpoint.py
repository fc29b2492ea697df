"""The handshake of ``/api/v1/projects/{project_id}/ws``: checked in full before accepting.

In order: the Host is ours, the Origin (when a browser sends one) is ours, the client speaks
``projectvm.v1``, it proves an identity — ``bearer.<token>`` or ``ticket.<ticket>`` among the
offered subprotocols (never in the URL), else a credential source such as a session cookie —
and that agent may read the project. Any failure is an HTTP answer with a problem document,
before the WebSocket exists. Only ``projectvm.v1`` is echoed back: the token is not.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.websockets import WebSocket

from guest_runtime.errors import ProjectVMError
from server.core.caller import Caller
from server.domain.operations import Operation
from server.surfaces.http.agent_slots import AgentBusy, AgentSlots
from server.surfaces.http.auth import CREATE_TOKEN_HINT, Authenticator, Identity
from server.surfaces.http.hosts import HostPolicy
from server.surfaces.http.problems import Problem, problem_of, problem_response
from server.surfaces.http.service_source import ServiceSource
from server.surfaces.http.ws.messages import PROTOCOL
from server.surfaces.http.ws.session import Session
from server.surfaces.http.ws.tickets import TicketBook

__all__ = ["ProjectSocket"]

BEARER_PREFIX = "bearer."
TICKET_PREFIX = "ticket."


class ProjectSocket:
    def __init__(
        self,
        service_source: ServiceSource,
        authenticator: Authenticator,
        tickets: TicketBook,
        hosts: HostPolicy,
        slots: AgentSlots,
    ) -> None:
        self._service_source = service_source
        self._authenticator = authenticator
        self._tickets = tickets
        self._hosts = hosts
        self._slots = slots

    async def serve(self, websocket: WebSocket) -> None:
        project_id = str(websocket.path_params["project_id"])
        try:
            identity = await self._handshake(websocket, project_id)
        except Problem as problem:
            await websocket.send_denial_response(problem_response(problem, websocket.url.path))
            return
        try:
            # A socket is one of its agent's requests in progress for as long as it is open.
            self._slots.take(identity.agent_id)
        except AgentBusy as busy:
            refusal = problem_response(busy.problem(), websocket.url.path, {"Retry-After": "1"})
            await websocket.send_denial_response(refusal)
            return
        try:
            service = self._service_source()
            if service is None:  # checked in the handshake; the server stopped meanwhile
                await websocket.close(1012, "the server is restarting")
                return
            await websocket.accept(subprotocol=PROTOCOL)
            session = Session(websocket, service, identity.agent_id, project_id)
            session.still_valid = identity.still_valid
            await session.run()
        finally:
            self._slots.give_back(identity.agent_id)

    async def _handshake(self, websocket: WebSocket, project_id: str) -> Identity:
        headers = websocket.headers
        if not self._hosts.allows_host(headers.get("host")):
            raise Problem(
                421, "misdirected-request", "Misdirected request",
                f"this server does not answer to the host {headers.get('host')!r}; connect "
                "through one of its own names (or start it with --allowed-host)",
            )  # fmt: skip
        if not self._hosts.allows_origin(headers.get("origin")):
            raise Problem(
                403, "foreign-origin", "Foreign origin",
                f"a page of {headers.get('origin')} may not open this server's WebSockets; "
                "open it from the server's own pages or from a client that is not a browser",
            )  # fmt: skip
        offered = [str(p) for p in websocket.scope.get("subprotocols", [])]
        if PROTOCOL not in offered:
            raise Problem(
                400, "unsupported-protocol", "Unsupported protocol",
                f"offer the subprotocol {PROTOCOL!r} (Sec-WebSocket-Protocol), with "
                "'bearer.<token>' or 'ticket.<ticket>' to authenticate",
            )  # fmt: skip
        identity = await self._identify(offered, headers, project_id)
        if identity is None:
            raise Problem(
                401, "unauthorized", "Unauthorized",
                "offer the subprotocol 'bearer.<token>' with your agent token, or "
                f"'ticket.<ticket>' from POST /api/v1/ws-tickets; {CREATE_TOKEN_HINT}",
            )  # fmt: skip
        service = self._service_source()
        if service is None:
            raise Problem(503, "starting", "Not ready", "the server is starting; retry shortly")
        caller = Caller(identity.agent_id, "websocket", Operation.GET_EVENTS)
        try:
            await service.gate.admit(caller, project_id)
        except ProjectVMError as err:
            raise problem_of(err, Operation.GET_EVENTS.value) from None
        return identity

    async def _identify(
        self, offered: list[str], headers: Headers, project_id: str
    ) -> Identity | None:
        for protocol in offered:
            if protocol.startswith(BEARER_PREFIX):
                return await self._authenticator.bearer.token(protocol[len(BEARER_PREFIX) :])
            if protocol.startswith(TICKET_PREFIX):
                return self._tickets.redeem(protocol[len(TICKET_PREFIX) :], project_id)
        identity = await self._authenticator.identify(headers)
        if identity is not None and identity.csrf_check is not None and not headers.get("origin"):
            return None  # a browser credential must come with the browser's Origin
        return identity
