"""ProjectVM: an MCP server giving teams of agents a shared, isolated, persistent VM per project."""

__version__ = "0.1.0"

__all__ = ["__version__"]
