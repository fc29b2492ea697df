"""The HTTP surface: one ASGI app with bearer-token auth, serving MCP at ``/mcp``."""
