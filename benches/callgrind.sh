#!/usr/bin/env bash
# Instructions per proxy-door request, under callgrind: the steadiest measure of the hot
# path on a noisy machine (wrk's spread here is about ±10% between runs).
#
#   cargo build --release && benches/callgrind.sh [requests, default 2000] [binary...]
#
# Each binary (default target/release/api-gateway-mcp) serves one API with a static
# credential, no auth, one thread, audit off, behind the benches' nginx upstream; it runs
# twice under valgrind --tool=callgrind, once answering nothing and once answering the
# requests over one keep-alive connection, and the difference over the count is printed.
# Needs valgrind, nginx and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-2000}"
shift || true
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/release/api-gateway-mcp)
for tool in valgrind nginx curl; do
  command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'stop_upstream "$work/up"; rm -rf "$work"' EXIT
. benches/upstream.sh
start_upstream "$work/up"
cat > "$work/gw.toml" <<CONF
[server]
mcp_listen = "127.0.0.1:13100"
proxy_listen = "127.0.0.1:18180"
admin_listen = "127.0.0.1:19190"
threads = 1
watch_config = false
shutdown_grace = "1s"
[auth]
required = false
[audit]
enabled = false
[[apis]]
name = "local"
base_url = "http://127.0.0.1:18181"
allow_private_network = true
methods = ["GET"]
paths = ["/**"]
credentials = { header = "X-Upstream-Key", value = "bench-static-secret" }
CONF
# One keep-alive connection: curl reuses it across the URLs of one invocation. Headers are
# given once: a curl config repeating `-H` per URL accumulates them across URLs.
printf -- '-H "Host: localhost"\n' > "$work/many"
for _ in $(seq "$n"); do printf 'url = "http://127.0.0.1:18180/local/data.json"\n-o /dev/null\n'; done >> "$work/many"

instructions() { # binary requests -> total instructions of the run
  local log="$work/cg.log"
  valgrind --tool=callgrind --callgrind-out-file=/dev/null --log-file="$log" \
    "$1" serve -c "$work/gw.toml" >/dev/null 2>&1 &
  local pid=$!
  until curl -sf http://127.0.0.1:19190/readyz >/dev/null 2>&1; do sleep 0.1; done
  if [ "$2" -gt 0 ]; then curl -s -K "$work/many" >/dev/null; fi
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  awk '/Collected :/ {print $NF}' "$log"
}

for b in "${bins[@]}"; do
  idle=$(instructions "$b" 0)
  busy=$(instructions "$b" "$n")
  awk -v b="$b" -v i="$idle" -v t="$busy" -v n="$n" \
    'BEGIN { printf "%s: %.1fk instructions per request (%d requests; %.0f M at rest, %.0f M with them)\n", b, (t - i) / n / 1000, n, i / 1e6, t / 1e6 }'
done
