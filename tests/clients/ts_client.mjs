// Real TypeScript SDK client: lists tools and calls api_gateway, printing one JSON line.
// usage: node ts_client.mjs http URL | node ts_client.mjs stdio BINARY CONFIG
// With MCP_BEARER set, the token is sent as `Authorization: Bearer` over HTTP, or handed to the
// stdio server as API_GATEWAY_MCP_TOKEN.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [mode, a, b] = process.argv.slice(2);
const token = process.env.MCP_BEARER;
const transport = mode === "http"
  ? new StreamableHTTPClientTransport(new URL(a), token ? { requestInit: { headers: { Authorization: `Bearer ${token}` } } } : undefined)
  : new StdioClientTransport({
    command: a, args: ["stdio", "-c", b], stderr: "ignore",
    env: token ? { API_GATEWAY_MCP_TOKEN: token } : undefined,
  });
const client = new Client({ name: "ts-test", version: "1.0.0" });
await client.connect(transport);
const tools = await client.listTools();
const ok = await client.callTool({ name: "api_gateway", arguments: { api: "local", endpoint: "/from-ts", method: "POST", body: { n: 1 } } });
const denied = await client.callTool({ name: "api_gateway", arguments: { api: "local", endpoint: "/x", method: "DELETE" } });
console.log(JSON.stringify({
  tools: tools.tools.map((t) => t.name),
  ok: { isError: ok.isError ?? false, structured: ok.structuredContent },
  denied: { isError: denied.isError, structured: denied.structuredContent },
}));
await client.close();
