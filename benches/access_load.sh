#!/usr/bin/env bash
# What access control costs under load: the proxy door with no authentication, with an API
# key, and with a JWT (HS256) plus RBAC, against a local nginx serving a small JSON file.
#
#   cargo build --release && benches/access_load.sh [seconds per run, default 8] [auth|limiter|audit]
#
# `limiter` compares the rate limiter off, in memory and in Redis (a redis-server started here)
# instead; `audit` compares the audit trail off and on (file sink). Needs nginx, wrk and redis-server. Prints one line per configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-8}"
mode="${2:-auth}"
bin=target/release/api-gateway-mcp
work=$(mktemp -d)
. benches/upstream.sh
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  stop_upstream "$work/up"
  rm -rf "$work"
}
trap cleanup EXIT

chmod 755 "$work"; mkdir -p "$work/logs"
start_upstream "$work/up"

key="agm_load-test-key-0123456789abcdefghijklmnopqrs"
secret="load-test-jwt-secret-0123456789abcdef"
key_sha=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
token=$(python3 - "$secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
b = lambda d: base64.urlsafe_b64encode(json.dumps(d, separators=(",", ":")).encode()).rstrip(b"=")
now = int(time.time())
msg = b({"alg": "HS256", "typ": "JWT"}) + b"." + b({"sub": "load", "iss": "https://issuer.test",
      "aud": "api-gateway-mcp", "iat": now, "exp": now + 3600, "roles": ["reader"]})
sig = base64.urlsafe_b64encode(hmac.new(sys.argv[1].encode(), msg, hashlib.sha256).digest()).rstrip(b"=")
print((msg + b"." + sig).decode())
PY
)

run() { # name, auth section, header
  cat > "$work/gw.toml" <<CONF
[server]
mcp_listen = "127.0.0.1:13000"
proxy_listen = "127.0.0.1:18080"
admin_listen = "127.0.0.1:19090"
threads = 2
$2
[[apis]]
name = "local"
base_url = "http://127.0.0.1:18181"
allow_private_network = true
paths = ["/**"]
CONF
  "$bin" serve -c "$work/gw.toml" 2>/dev/null &
  local pid=$!
  until curl -sf http://127.0.0.1:19090/readyz >/dev/null; do sleep 0.05; done
  local args=(-t1 -c32 -d"${secs}s" --latency)
  [ -n "$3" ] && args+=(-H "$3")
  local code; code=$(curl -s -o /dev/null -w "%{http_code}" ${3:+-H "$3"} http://127.0.0.1:18080/local/data.json)
  [ "$code" = 200 ] || { echo "$1: status $code"; kill $pid; return 1; }
  local out; out=$(wrk "${args[@]}" http://127.0.0.1:18080/local/data.json)
  printf '%-22s %10s req/s  p50 %-8s p99 %s\n' "$1" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(awk '$1=="50%" {print $2}' <<<"$out")" "$(awk '$1=="99%" {print $2}' <<<"$out")"
  kill $pid; wait $pid 2>/dev/null || true
}

if [ "$mode" = audit ]; then
  run "audit off" $'[auth]\nrequired = false\n[audit]\nenabled = false' ""
  run "audit file sink" $'[auth]\nrequired = false\n[audit]\nsink = "file"' ""
  echo "  audit: $(wc -l < "$work/audit.jsonl") records written"
  "$bin" audit verify --file "$work/audit.jsonl" | sed 's/^/  audit: /'
  run "audit sqlite sink" $'[auth]\nrequired = false\n[audit]\nsink = "sqlite"' ""
  "$bin" audit verify --sqlite "$work/audit.db" | sed 's/^/  audit: /'
  exit 0
fi

if [ "$mode" = limiter ]; then
  redis-server --port 16390 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$work/redis.pid" --logfile "$work/logs/redis.log"
  until redis-cli -p 16390 ping >/dev/null 2>&1; do sleep 0.05; done
  trap 'kill $(cat "$work/redis.pid") 2>/dev/null; cleanup' EXIT
  run "limiter off" $'[auth]\nrequired = false' ""
  run "memory limiter" $'[auth]\nrequired = false\n[rate_limits]\ndefault = { requests = 100000000, window = "1m" }' ""
  redis-cli -p 16390 config resetstat >/dev/null
  cpu0=$(redis-cli -p 16390 info cpu | awk -F: '/used_cpu_(sys|user):/ {s+=$2} END {print s}')
  run "redis limiter" $'[auth]\nrequired = false\n[rate_limits]\ndefault = { requests = 100000000, window = "1m" }\nstore = { kind = "redis", url = "redis://127.0.0.1:16390", timeout = "50ms" }' ""
  cpu1=$(redis-cli -p 16390 info cpu | awk -F: '/used_cpu_(sys|user):/ {s+=$2} END {print s}')
  # Where the Redis time goes: the script's own cost per call, and Redis's share of the CPU.
  redis-cli -p 16390 info commandstats | tr -d '\r' | awk -F'[:,=]' '/cmdstat_evalsha/ {printf "  redis: %s script calls, %s us each inside Redis\n", $3, $7}'
  awk -v a="$cpu0" -v b="$cpu1" -v s="$secs" 'BEGIN {printf "  redis: %.0f%% of one core over the run\n", (b-a)/s*100}'
  exit 0
fi

rbac='[[rbac.roles]]
name = "reader"
allow = [{ api = "local", methods = ["GET"] }]'
run "no auth" $'[auth]\nrequired = false' ""
run "api key + rbac" "[auth]
methods = [\"api_key\"]
[[auth.api_keys]]
name = \"load\"
key_sha256 = \"$key_sha\"
roles = [\"reader\"]
$rbac" "X-API-Key: $key"
run "jwt hs256 + rbac" "[auth]
methods = [\"bearer_token\"]
[auth.jwt]
secret = \"$secret\"
issuer = \"https://issuer.test\"
audience = \"api-gateway-mcp\"
$rbac" "Authorization: Bearer $token"
