"""Real Python `mcp` client waiting to be told that the tool list changed.

usage: py_list_changed.py URL MODE DOC NEW
MODE is "legacy" (a session: notifications/tools/list_changed arrives on its stream) or
"auto" (2026-07-28: a subscriptions/listen stream for tools_list_changed). The client lists
the tools, copies the file NEW over DOC (the API's OpenAPI document), waits up to 15 s to be
told, and lists the tools again. Prints one JSON line: {"notified", "before", "after"}.
"""
import asyncio
import json
import shutil
import sys

import anyio
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client


async def main() -> None:
    url, mode, doc, new = sys.argv[1:5]
    told = anyio.Event()

    async def on_message(message) -> None:
        inner = getattr(message, "root", message)
        if getattr(inner, "method", None) == "notifications/tools/list_changed":
            told.set()
        await anyio.lowlevel.checkpoint()

    async with Client(streamable_http_client(url), mode=mode, message_handler=on_message) as client:
        before = [t.name for t in (await client.list_tools()).tools]
        if mode == "legacy":
            shutil.copyfile(new, doc)
            with anyio.move_on_after(15):
                await told.wait()
        else:
            async with client.listen(tools_list_changed=True) as sub:
                shutil.copyfile(new, doc)
                with anyio.move_on_after(15):
                    async for _event in sub:
                        told.set()
                        break
        after = [t.name for t in (await client.list_tools()).tools]
        print(json.dumps({"notified": told.is_set(), "before": before, "after": after}))


asyncio.run(main())
