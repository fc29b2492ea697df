"""The surfaces through which callers reach the core: MCP (agents) and HTTP."""
