"""Real Python `mcp` client acting for a user who has not connected an API yet.

usage: py_connect.py URL MODE API SECRET
MODE is "legacy" (initialize handshake: the server asks with elicitation/create during the
call) or "auto" (2026-07-28: the server answers input_required, the SDK retries). The client
declares URL elicitation; its callback plays the user: it opens the connect page, posts SECRET
in its form, and accepts. Prints one JSON line: the elicitations seen and the call's result.
MCP_BEARER is sent as `Authorization: Bearer`.
"""
import asyncio
import json
import os
import re
import sys
import urllib.parse
import urllib.request

import httpx2
import mcp_types as types
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client


async def main() -> None:
    url, mode, api, secret = sys.argv[1:5]
    seen = []

    async def elicit(context, params):
        seen.append({"mode": getattr(params, "mode", None), "url": getattr(params, "url", None)})
        page = await asyncio.to_thread(lambda: urllib.request.urlopen(params.url).read().decode())
        token = re.search(r'name="t" value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode({"t": token, "secret": secret}).encode()
        action = params.url.split("?")[0]
        await asyncio.to_thread(lambda: urllib.request.urlopen(action, data=form).read())
        return types.ElicitResult(action="accept")

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {os.environ['MCP_BEARER']}"}, timeout=30)
    server = streamable_http_client(url, http_client=http)
    async with Client(server, mode=mode, elicitation_callback=elicit) as client:
        result = await client.call_tool("api_gateway", {"api": api, "endpoint": "/connected"})
        print(json.dumps({
            "protocol": client.protocol_version,
            "elicitations": seen,
            "isError": result.is_error,
            "structured": result.structured_content,
        }))


asyncio.run(main())
