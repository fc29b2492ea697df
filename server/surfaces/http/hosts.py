"""Which Host and Origin headers this server answers: its own names only.

A web page on another site must not reach the server through a name it controls (DNS
rebinding) nor open a WebSocket with a visitor's browser (a foreign ``Origin``). The same lists
guard ``/mcp`` (through the MCP SDK's transport security) and ``/api/v1``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcp.server.transport_security import TransportSecuritySettings

__all__ = ["HostPolicy"]


def _has_port(host: str) -> bool:
    return ":" in host.rsplit("]", 1)[-1]


@dataclass(frozen=True)
class HostPolicy:
    """``hosts``: names on any port (``127.0.0.1``, ``[::1]``, ``pvm.internal``) or one
    ``name:port`` exactly, as ``--allowed-host`` gives them."""

    hosts: frozenset[str]

    @classmethod
    def for_bind(cls, host: str, extra_hosts: list[str] | None = None) -> HostPolicy:
        bound = host if ":" not in host else f"[{host}]"
        return cls(frozenset({"127.0.0.1", "localhost", "[::1]", bound, *(extra_hosts or [])}))

    def allows_host(self, host: str | None) -> bool:
        """A Host header: one of our names, with or without a port."""
        if not host:
            return False
        return host in self.hosts or _name_of(host) in self.hosts

    def allows_origin(self, origin: str | None) -> bool:
        """An Origin header: absent (not a browser), or http(s) on one of our names."""
        if origin is None:
            return True
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme not in ("http", "https") or "/" in rest:
            return False
        return self.allows_host(rest)

    def mcp_settings(self) -> TransportSecuritySettings:
        """The same policy in the MCP SDK's terms (which wants ``name:*`` for any port)."""
        names = sorted(self.hosts)
        allowed = [name if _has_port(name) else f"{name}:*" for name in names] + names
        origins = [f"{scheme}://{host}" for scheme in ("http", "https") for host in allowed]
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=allowed, allowed_origins=origins
        )


def _name_of(host: str) -> str:
    """``name:port`` or ``[v6]:port`` without its port."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
