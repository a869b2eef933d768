"""Real Python `mcp` client: lists tools and calls api_gateway, printing one JSON line.

usage: py_client.py http URL MODE | py_client.py stdio MODE BINARY CONFIG
MODE is "legacy" (initialize handshake) or "auto" (server/discover, 2026-07-28).
"""
import asyncio
import json
import sys

from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters


async def main() -> None:
    transport = sys.argv[1]
    if transport == "http":
        server, mode = sys.argv[2], sys.argv[3]
    else:
        mode = sys.argv[2]
        server = StdioServerParameters(command=sys.argv[3], args=["stdio", "-c", sys.argv[4]])
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
