"""The MCP surface: tools generated from the core's operations, the event-feed resource."""
