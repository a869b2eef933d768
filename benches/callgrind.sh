#!/usr/bin/env bash
# Instructions per request, under callgrind: the steadiest measure of the hot path on a
# noisy machine (wrk's spread here is about ±10% between runs).
#
#   cargo build --release && benches/callgrind.sh [requests, default 2000] [binary...]
#   DOOR=mcp benches/callgrind.sh …     the MCP door (a stateless 2026-07-28 tools/call of
#                                       api_gateway) instead of the proxy door
#   CG_OUT=dir benches/callgrind.sh …   keep each busy run's profile as dir/NAME.DOOR.cg
#                                       (read it with callgrind_annotate --inclusive=yes)
#   THREADS=2 …                         the gateway's thread count (default 1)
#   CONFIG_EXTRA='[mcp]\nstateless_fast_path = false' …
#                                       appended to the gateway's config (backslash escapes
#                                       read as printf %b reads them)
#
# Each binary (default target/release/api-gateway-mcp) runs as load.sh's `c` and `e`
# configurations do: API-key auth, the memory limiter, audit off, one API behind the
# benches' nginx upstream. It runs twice under valgrind --tool=callgrind, once answering
# one request and once answering it and then the requests over one keep-alive connection;
# the difference over the count is printed. The floor (examples/pingora_floor beside the
# binary) is counted the same way for the proxy door when it is built.
# Needs valgrind, nginx and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-2000}"
shift || true
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/release/api-gateway-mcp)
door="${DOOR:-proxy}"
threads="${THREADS:-1}"
for tool in valgrind nginx curl; do
  command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
work=$(mktemp -d)
chmod 755 "$work"
trap 'stop_upstream "$work/up"; rm -rf "$work"' EXIT
. benches/upstream.sh
start_upstream "$work/up"
. benches/gateway.sh
key=$bench_key
gateway_config 127.0.0.1:13100 127.0.0.1:18180 127.0.0.1:19190 "$threads" > "$work/gw.toml"
[ -z "${CONFIG_EXTRA:-}" ] || printf '%b\n' "$CONFIG_EXTRA" >> "$work/gw.toml"
# One keep-alive connection: curl reuses it across the URLs of one invocation. Headers and
# the body are given once: options in a curl config apply to every URL, and a `-H` repeated
# per URL accumulates.
if [ "$door" = mcp ]; then
  url="http://127.0.0.1:13100/mcp"
  { printf -- '-H "Host: localhost"\n-H "X-API-Key: %s"\n' "$key"
    mcp_headers | while read -r line; do printf -- '-H "%s"\n' "$line"; done
    printf 'data = "%s"\n' "$(mcp_body curl | sed 's/"/\\"/g')"
  } > "$work/head"
else
  url="http://127.0.0.1:18180/local/data.json"
  printf -- '-H "Host: localhost"\n-H "X-API-Key: %s"\n' "$key" > "$work/head"
fi
cp "$work/head" "$work/many"
for _ in $(seq "$n"); do printf 'url = "%s"\n-o /dev/null\n' "$url"; done >> "$work/many"
cp "$work/head" "$work/one"
printf 'url = "%s"\n-w "\\n%%{http_code}"\n' "$url" >> "$work/one"

instructions() { # binary requests name -> total instructions of the run
  local log="$work/cg.log" out=/dev/null
  if [ -n "${CG_OUT:-}" ] && [ "$2" -gt 0 ]; then mkdir -p "$CG_OUT"; out="$CG_OUT/$3.$door.cg"; fi
  if [[ "$1" == *pingora_floor ]]; then
    valgrind --tool=callgrind --callgrind-out-file="$out" --log-file="$log" \
      "$1" 127.0.0.1:18180 127.0.0.1:18181 "$threads" >/dev/null 2>&1 &
  else
    valgrind --tool=callgrind --callgrind-out-file="$out" --log-file="$log" \
      "$1" serve -c "$work/gw.toml" >/dev/null 2>&1 &
  fi
  local pid=$!
  until curl -s -o /dev/null http://127.0.0.1:18180/ 2>/dev/null; do sleep 0.1; done
  # Both runs answer one request first, checked (a harness measuring refusals measures the
  # wrong path), so one-time work (loading the CA bundle, the first upstream connection) is
  # subtracted with the rest of start-up.
  local got one="$work/one" many="$work/many"
  if [[ "$1" == *pingora_floor ]]; then
    # The floor forwards paths as they are: the same document, without the API's prefix.
    sed 's|/local/|/|' "$work/one" > "$work/one.floor"; one="$work/one.floor"
    sed 's|/local/|/|' "$work/many" > "$work/many.floor"; many="$work/many.floor"
  fi
  got=$(curl -s -K "$one")
  { [ "$(tail -n1 <<<"$got")" = 200 ] && { [ "$door" = proxy ] || grep -q '\\"status\\":200' <<<"$got"; }; } \
    || { echo "$1 ($door door) did not answer 200 from the upstream: $got" >&2; kill "$pid"; exit 1; }
  if [ "$2" -gt 0 ]; then curl -s -K "$many" >/dev/null; fi
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  awk '/Collected :/ {print $NF}' "$log"
}

floor="$(dirname "${bins[0]}")/examples/pingora_floor"
[ "$door" = proxy ] && [ -x "$floor" ] && bins+=("$floor")
for b in "${bins[@]}"; do
  name=$(basename "$b")
  idle=$(instructions "$b" 0 "$name")
  busy=$(instructions "$b" "$n" "$name")
  awk -v b="$b" -v d="$door" -v i="$idle" -v t="$busy" -v n="$n" \
    'BEGIN { printf "%s (%s door): %.1fk instructions per request (%d requests; %.0f M at rest, %.0f M with them)\n", b, d, (t - i) / n / 1000, n, i / 1e6, t / 1e6 }'
done
