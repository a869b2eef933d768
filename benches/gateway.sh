# Sourced by the load scripts (load.sh, callgrind.sh): the gateway they measure, configured
# alike, and the MCP call they send it, so both harnesses measure the same thing.
#
#   bench_key                  the API key every measured request presents (X-API-Key)
#   gateway_config MCP PROXY ADMIN THREADS [RATE_LIMIT_LINE]
#                              the config on stdout: API-key auth (the key may call only
#                              `local`), the memory limiter (or the [rate_limits] line given,
#                              e.g. a Redis store) set too high to refuse anything, audit off,
#                              one API `local` in front of upstream.sh's nginx
#   mcp_headers                the headers of a stateless (2026-07-28) tools/call of
#                              api_gateway, one "Name: value" per line, without the key
#   mcp_body CLIENT            its JSON-RPC body, from a client named CLIENT
bench_key="agm_load-test-key-0123456789abcdefghijklmnopqrs"

gateway_config() {
  local key_sha
  key_sha=$(printf %s "$bench_key" | sha256sum | cut -d' ' -f1)
  cat <<CONF
[server]
mcp_listen = "$1"
proxy_listen = "$2"
admin_listen = "$3"
threads = $4
watch_config = false
shutdown_grace = "1s"
[auth]
methods = ["api_key"]
[[auth.api_keys]]
name = "load"
key_sha256 = "$key_sha"
allowed_apis = ["local"]
[audit]
enabled = false
[rate_limits]
default = { requests = 100000000, window = "1m" }
${5:-}
[[apis]]
name = "local"
base_url = "http://127.0.0.1:18181"
allow_private_network = true
methods = ["GET"]
paths = ["/**"]
CONF
}

mcp_headers() {
  cat <<'HEAD'
Content-Type: application/json
Accept: application/json, text/event-stream
MCP-Protocol-Version: 2026-07-28
Mcp-Method: tools/call
Mcp-Name: api_gateway
HEAD
}

mcp_body() {
  printf '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"api_gateway","arguments":{"api":"local","endpoint":"/data.json"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"%s","version":"1"}}}}' "$1"
}
