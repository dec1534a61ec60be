"""The floor of a tool call: the SDK's bare `echo` tool on a plain MCPServer, over stdio or streamable HTTP."""

from __future__ import annotations

import argparse
import logging

from mcp.server.mcpserver import MCPServer


def build() -> MCPServer:
    server = MCPServer(name="echo-floor", log_level="WARNING")

    @server.tool()
    async def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", type=int, default=None, metavar="PORT", help="serve streamable HTTP on PORT")
    ns = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    server = build()
    if ns.http is None:
        server.run("stdio")
        return
    import uvicorn

    # The same uvicorn configuration as fleet_mcp.http.serve_http, so only the server's own work differs.
    app = server.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=ns.http, log_level="warning", lifespan="on")).run()


if __name__ == "__main__":
    main()
