"""The operator console at /ui/: one more client of the tool registry, served by the same ASGI app as MCP.

Every read and action is a `Gate.call` as the signed-in principal (transport "console"); the console owns
only presentation, its sign-in sessions and CSRF protection. Build it with `fleet_mcp.console.app.build_console`.
"""
