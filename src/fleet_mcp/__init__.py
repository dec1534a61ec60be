"""fleet-mcp: an MCP server for fleet operations that must never happen by accident."""

__version__ = "0.1.0"
