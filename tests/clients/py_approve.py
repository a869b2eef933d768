"""Real Python `mcp` client making a call that waits for approval.

usage: py_approve.py URL MODE
MODE:
- "legacy-confirm" / "auto-confirm": the client declares form elicitation; its user (the
  callback) confirms. Legacy sessions are asked with elicitation/create during the call,
  2026-07-28 clients get input_required and the SDK retries.
- "auto-decline": as auto-confirm, but the user declines.
- "auto-task": 2026-07-28 with the tasks extension; the call becomes a task, polled until
  it completes (someone else approves it meanwhile).
Prints one JSON line: the elicitations seen and the call's result. MCP_API_KEY is sent as
X-API-Key. The call is DELETE /accounts/7 on API "pay" (or POST /refunds/r-5 for tasks).
"""
import asyncio
import json
import os
import sys
from typing import Any, Literal

import anyio
import httpx2
import mcp_types as types
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client


class CreateTask(types.Result):
    result_type: Literal["task"]
    task_id: str
    status: str
    poll_interval_ms: int | None = None


class TaskIdParams(types.RequestParams):
    task_id: str


class TasksGet(types.Request[TaskIdParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    name_param = "taskId"


class TaskState(types.Result):
    task_id: str
    status: str
    status_message: str | None = None
    poll_interval_ms: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


async def main() -> None:
    url, mode = sys.argv[1], sys.argv[2]
    seen = []
    polls = []

    async def elicit(context, params):
        seen.append({"mode": getattr(params, "mode", None), "message": params.message})
        if mode == "auto-decline":
            return types.ElicitResult(action="decline")
        return types.ElicitResult(action="accept", content={"confirm": True, "reason": "yes, close it"})

    kwargs: dict[str, Any] = {}
    call = {"api": "pay", "method": "DELETE", "endpoint": "/accounts/7"}
    if mode == "auto-task":
        from mcp.client import ClientExtension, ResultClaim

        async def poll(t: CreateTask, ctx) -> types.CallToolResult:
            while True:
                await anyio.sleep((t.poll_interval_ms or 1000) / 1000)
                s = await ctx.session.send_request(TasksGet(params=TaskIdParams(task_id=t.task_id)), TaskState)
                polls.append(s.status)
                if s.status == "completed":
                    return types.CallToolResult.model_validate(s.result)
                if s.status in ("failed", "cancelled"):
                    raise RuntimeError(f"task {s.status}: {s.error}")

        class Tasks(ClientExtension):
            identifier = "io.modelcontextprotocol/tasks"

            def claims(self):
                return [ResultClaim(result_type="task", model=CreateTask, resolve=poll)]

        kwargs["extensions"] = [Tasks()]
        call = {"api": "pay", "method": "POST", "endpoint": "/refunds/r-5", "body": {"amount": 5}}
    else:
        kwargs["elicitation_callback"] = elicit

    http = httpx2.AsyncClient(headers={"X-API-Key": os.environ["MCP_API_KEY"]}, timeout=60)
    server = streamable_http_client(url, http_client=http)
    client_mode = "legacy" if mode.startswith("legacy") else "auto"
    async with Client(server, mode=client_mode, **kwargs) as client:
        result = await client.call_tool("api_gateway", call)
        print(json.dumps({
            "protocol": client.protocol_version,
            "elicitations": seen,
            "polls": polls,
            "isError": result.is_error,
            "structured": result.structured_content,
        }))


asyncio.run(main())
