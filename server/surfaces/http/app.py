"""The HTTP app: MCP at ``/mcp`` behind per-agent bearer tokens, Host/Origin checks on."""

from __future__ import annotations

from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp

from server.surfaces.http.auth import BearerAuth
from server.surfaces.http.request_ids import UniqueRequestIds
from server.surfaces.mcp.server import ServerHandle

__all__ = ["MCP_PATH", "build_http_app"]

MCP_PATH = "/mcp"


def _security(host: str, extra_hosts: list[str]) -> TransportSecuritySettings:
    """Accept only our own Host names: blocks DNS-rebinding from web pages."""
    hosts = {"127.0.0.1", "localhost", "[::1]", host if ":" not in host else f"[{host}]"}
    hosts.update(extra_hosts)
    allowed = sorted(f"{h}:*" if ":" not in h.rsplit("]", 1)[-1] else h for h in hosts)
    allowed += sorted(hosts)  # some clients omit the port
    origins = [f"http://{h}" for h in allowed] + [f"https://{h}" for h in allowed]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=allowed, allowed_origins=origins
    )


def build_http_app(
    handle: ServerHandle, host: str, allowed_hosts: list[str] | None = None
) -> ASGIApp:
    # A write_file call carries its content base64- or JSON-encoded: leave room for that.
    largest_file = handle.config.limits.max_file_bytes
    largest_body = largest_file * 4 // 3 + 1024 * 1024
    mcp_app = handle.mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        transport_security=_security(host, allowed_hosts or []),
        max_request_body_size=largest_body,
    )

    async def resolve(token: str) -> str | None:
        if handle.state is None or not token:
            return None
        return await handle.state.service.agents.resolve(token)

    return BearerAuth(UniqueRequestIds(mcp_app, MCP_PATH, largest_body), resolve)
