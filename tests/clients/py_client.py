"""Real Python `mcp` client: lists tools and calls api_gateway, printing one JSON line.

usage: py_client.py http URL MODE | py_client.py stdio MODE BINARY CONFIG
MODE is "legacy" (initialize handshake) or "auto" (server/discover, 2026-07-28).
With MCP_BEARER set, the token is sent as `Authorization: Bearer` over HTTP, or handed to the
stdio server as API_GATEWAY_MCP_TOKEN.
"""
import asyncio
import json
import os
import sys

from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters


async def main() -> None:
    transport = sys.argv[1]
    token = os.environ.get("MCP_BEARER")
    if transport == "http":
        server, mode = sys.argv[2], sys.argv[3]
        if token:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
            server = streamable_http_client(server, http_client=http)
    else:
        mode = sys.argv[2]
        env = {"API_GATEWAY_MCP_TOKEN": token} if token else None
        server = StdioServerParameters(command=sys.argv[3], args=["stdio", "-c", sys.argv[4]], env=env)
    async with Client(server, mode=mode) as client:
        tools = await client.list_tools()
        ok = await client.call_tool("api_gateway", {"api": "local", "endpoint": "/from-python", "query": {"mode": mode}})
        denied = await client.call_tool("api_gateway", {"api": "local", "endpoint": "/../etc/passwd"})
        print(json.dumps({
            "protocol": client.protocol_version,
            "tools": [t.name for t in tools.tools],
            "ok": {"isError": ok.is_error, "structured": ok.structured_content},
            "denied": {"isError": denied.is_error, "structured": denied.structured_content},
        }))


asyncio.run(main())
