#!/usr/bin/env bash
# The gateway against nginx and the direct path, under wrk.
#
#   cargo build --release && benches/load.sh [seconds per run, default 10] [rounds, default 3]
#   THREADS="1 2" benches/load.sh …   the gateway and the floor at each thread count (default "2";
#                                     labels then end in @N), and the issue-21 ratios
#
# Needs nginx, wrk, redis-server and curl (Debian: apt-get install nginx wrk redis-server curl).
# An nginx serving a small JSON document is the upstream. Each configuration runs once per
# round, rounds interleaved so drift on the machine hits every configuration alike:
#   a  direct        wrk -> upstream nginx
#   b  nginx proxy   wrk -> nginx proxy_pass with upstream keepalive -> upstream
#   c  proxy door    wrk -> gateway /local/... (API key + RBAC-free key, memory limiter) -> upstream
#   d  proxy+redis   as c, the limiter in a local redis-server
#   e  mcp door      wrk POSTs a stateless (2026-07-28) tools/call of api_gateway -> upstream
#   f  traced        as c, with [tracing] on: two spans per call exported over OTLP/HTTP
#   h  own credential as c, the API injecting the caller's own secret (credentials.mode =
#                    "per_principal", read from a SQLite credential store on every call)
#   i  mcp tool      as e, calling the tool generated from an OpenAPI operation of the same
#                    endpoint (local_getData) instead of api_gateway
#   j  mcp session   as e, in a legacy (2025-06-18) session opened before the run: every
#                    connection posts tools/call with its Mcp-Session-Id, answered over SSE
#   g  pingora       a bare Pingora proxy (examples/pingora_floor.rs, same threads and profile)
#                    that only forwards: the floor under c. Measured when it is built
#                    (cargo build --release --example pingora_floor).
#   CONFIGS="c e"    only these of c d e f h i j (a, b and g always run), for a shorter A/B run
#   c0, e0           with AGM_BASE_BIN set (another build, e.g. of an older commit): c and e
#                    on that binary, in the same rounds, for an A/B comparison.
# The limit is set too high to refuse anything; audit is off (nginx logs nothing either).
# Printed: per configuration the median of the rounds (req/s, p50, p99), the process's CPU
# (% of one core, then per request in user and kernel mode) and peak RSS; the ratios to a and
# b; redis-server's CPU per decision in d; then the gateway's start-to-ready time, its idle
# RSS, and its RSS after a 256-connection run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
rounds="${2:-3}"
conns=32
threads_list="${THREADS:-2}"
bin="${AGM_BIN:-target/release/api-gateway-mcp}"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
base_bin="${AGM_BASE_BIN:-}"
[ -z "$base_bin" ] || [ -x "$base_bin" ] || { echo "AGM_BASE_BIN $base_bin is not executable" >&2; exit 1; }
for tool in nginx wrk redis-server curl; do
  command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_upstream "$work/up"
  for f in "$work"/px/nginx.pid "$work"/redis.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 0.2
  rm -rf "$work"
}
trap cleanup EXIT
chmod 755 "$work"

# The upstream, shared with access_load.sh.
. benches/upstream.sh
start_upstream "$work/up"
mkdir -p "$work/px/logs"
# The peer baseline: nginx as a reverse proxy, as many workers as the gateway has threads.
cat > "$work/px/nginx.conf" <<CONF
worker_processes 2; daemon on; pid $work/px/nginx.pid; error_log $work/px/logs/error.log;
events { worker_connections 4096; }
http { access_log off;
  upstream backend { server 127.0.0.1:18181; keepalive 64; }
  server { listen 127.0.0.1:18282; keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
nginx -p "$work/px" -c nginx.conf
redis-server --port 16391 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --pidfile "$work/redis.pid" --logfile "$work/redis.log"
until redis-cli -p 16391 ping >/dev/null 2>&1; do sleep 0.05; done

. benches/gateway.sh
key=$bench_key
gw_threads=2
gw_config() { gateway_config 127.0.0.1:13000 127.0.0.1:18080 127.0.0.1:19090 "$gw_threads" "$@"; }
make_configs() { # writes every gateway config for $gw_threads threads, as NAME-$gw_threads.toml
  gw_config > "$work/memory-$gw_threads.toml"
  # f: as c, with every call traced and its spans exported over OTLP/HTTP (the upstream nginx
  # answers the exports).
  { gw_config; printf '[tracing]\nendpoint = "http://127.0.0.1:18181"\n'; } > "$work/traced-$gw_threads.toml"
  gw_config 'store = { kind = "redis", url = "redis://127.0.0.1:16391", timeout = "50ms" }' > "$work/redis-$gw_threads.toml"
  # h: the caller's own credential, stored once before the runs.
  { gw_config
    echo 'credentials = { mode = "per_principal", header = "Authorization" }'
    printf '[credential_store]\nkind = "sqlite"\npath = "%s/creds.db"\nkey_env = "AGM_BENCH_CRED_KEY"\n' "$work"
  } > "$work/own-$gw_threads.toml"
  # i: the same API described by an OpenAPI document, called through its generated tool.
  { gw_config
    cat <<'TOML'
[apis.openapi]
inline = '''{"openapi": "3.1.0", "info": {"title": "load", "version": "1"}, "paths": {"/data.json": {"get": {"operationId": "getData", "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}}}}}}'''
TOML
  } > "$work/tools-$gw_threads.toml"
}
export AGM_BENCH_CRED_KEY; AGM_BENCH_CRED_KEY=$(head -c32 /dev/urandom | base64)
for gw_threads in $threads_list; do make_configs; done
printf 'bench-own-secret' | "$bin" credentials set -c "$work/own-$gw_threads.toml" --api local --principal key:load >/dev/null
# wrk script for the MCP door: a stateless tools/call, as a 2026-07-28 client sends it.
{ echo 'wrk.method = "POST"'
  mcp_headers | while IFS=': ' read -r name value; do printf 'wrk.headers["%s"] = "%s"\n' "$name" "$value"; done
  printf 'wrk.headers["X-API-Key"] = "%s"\n' "$key"
  printf "wrk.body = '%s'\n" "$(mcp_body wrk)"
} > "$work/mcp.lua"

sed -e 's/"Mcp-Name"] = "api_gateway"/"Mcp-Name"] = "local_getData"/' \
    -e 's|"name":"api_gateway","arguments":{"api":"local","endpoint":"/data.json"}|"name":"local_getData","arguments":{}|' \
    "$work/mcp.lua" > "$work/mcp_tool.lua"

now_ms() { date +%s%3N; }
gw_pid=""
ready_ms=""
start_gateway() { # config file [binary]; sets gw_pid, and ready_ms: from exec to /readyz answering
  local t0; t0=$(now_ms)
  "${2:-$bin}" serve -c "$1" >/dev/null 2>&1 &
  gw_pid=$!
  pids+=("$gw_pid")
  until curl -sf http://127.0.0.1:19090/readyz >/dev/null 2>&1; do sleep 0.005; done
  ready_ms=$(( $(now_ms) - t0 ))
}
probe() { # the proxy door answers 200 before it is measured
  local out; out=$(curl -s -w ' %{http_code}' -H "X-API-Key: $key" http://127.0.0.1:18080/local/data.json)
  [ "${out##* }" = 200 ] || { echo "proxy door: $out" >&2; exit 1; }
}
stop_gateway() { kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
uticks() { awk '{print $14}' "/proc/$1/stat"; }
ms() { # wrk latency ("812.00us", "1.23ms", "1.01s") to ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /[0-9]s$/ && v !~ /ms$/) n *= 1000; printf "%.3f", n }'
}
hz=$(getconf CLK_TCK)

# One run: label, URL, the pids to measure ("" for none; CPU and peak RSS are summed over
# them), then extra wrk arguments. Appends a line to $work/results.
run() {
  local label=$1 url=$2 pids_=$3
  shift 3
  local t0=0 u0=0 p
  for p in $pids_; do t0=$((t0 + $(ticks "$p"))); u0=$((u0 + $(uticks "$p"))); done
  local r0=0; [[ "$label" == d_proxy_redis* ]] && r0=$(ticks "$(cat "$work/redis.pid")")
  local out; out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency "$@" "$url")
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  local cpu=- usr=- sys=- rss=-
  if [ -n "$pids_" ]; then
    local t1=0 u1=0; for p in $pids_; do t1=$((t1 + $(ticks "$p"))); u1=$((u1 + $(uticks "$p"))); done
    cpu=$(awk -v a="$t0" -v b="$t1" -v s="$secs" -v hz="$hz" 'BEGIN {printf "%.0f", (b-a)/hz/s*100}')
    # CPU time per request, in us, in user and in kernel mode.
    usr=$(awk -v a="$u0" -v b="$u1" -v s="$secs" -v hz="$hz" -v r="$rps" 'BEGIN {printf "%.1f", (b-a)/hz/(r*s)*1e6}')
    sys=$(awk -v a="$((t0 - u0))" -v b="$((t1 - u1))" -v s="$secs" -v hz="$hz" -v r="$rps" 'BEGIN {printf "%.1f", (b-a)/hz/(r*s)*1e6}')
    rss=$(for p in $pids_; do cat "/proc/$p/status"; done | awk '/VmHWM/ {k += $2} END {printf "%.1f", k/1024}')
  fi
  if [[ "$label" == d_proxy_redis* ]]; then
    awk -v a="$r0" -v b="$(ticks "$(cat "$work/redis.pid")")" -v s="$secs" -v hz="$hz" -v r="$rps" \
      'BEGIN {printf "%.1f\n", (b-a)/hz/(r*s)*1e6}' >> "$work/redis_us"
  fi
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
  [ -z "$non2xx" ] || { echo "$label: $non2xx non-2xx responses" >&2; echo "$out" >&2; exit 1; }
  printf '%s %s %s %s %s %s %s %s\n' "$label" "$rps" \
    "$(ms "$(awk '$1=="50%" {print $2}' <<<"$out")")" \
    "$(ms "$(awk '$1=="99%" {print $2}' <<<"$out")")" "$cpu" "$rss" "$usr" "$sys" >> "$work/results"
}

want() { [[ " ${CONFIGS:-c d e f h i j} " == *" $1 "* ]]; }
# Opens a legacy session on the running gateway (initialize, then notifications/initialized)
# and writes the wrk script that calls api_gateway in it.
open_session() {
  local url=http://127.0.0.1:13000/mcp head sid
  local -a h=(-H "X-API-Key: $key" -H "Content-Type: application/json"
              -H "Accept: application/json, text/event-stream")
  head=$(curl -s -D - -o /dev/null "${h[@]}" "$url" \
    -d '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"wrk","version":"1"}}}')
  sid=$(awk -F': ' 'tolower($1) == "mcp-session-id" {print $2}' <<<"$head" | tr -d '\r')
  [ -n "$sid" ] || { echo "no MCP session: $head" >&2; exit 1; }
  curl -s -o /dev/null "${h[@]}" -H "Mcp-Session-Id: $sid" -H "MCP-Protocol-Version: 2025-06-18" "$url" \
    -d '{"jsonrpc":"2.0","method":"notifications/initialized"}'
  { echo 'wrk.method = "POST"'
    printf 'wrk.headers["%s"] = "%s"\n' Content-Type application/json \
      Accept "application/json, text/event-stream" X-API-Key "$key" Mcp-Session-Id "$sid" \
      MCP-Protocol-Version 2025-06-18
    # Each request its own id: requests in flight at once in one session must not share one.
    cat <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"jsonrpc":"2.0","id":' .. n .. ',"method":"tools/call","params":{"name":"api_gateway","arguments":{"api":"local","endpoint":"/data.json"}}}')
end
LUA
  } > "$work/mcp_session.lua"
}
proxy_workers=$(pgrep -P "$(cat "$work/px/nginx.pid")" | tr '\n' ' ')
floor_bin="$(dirname "$bin")/examples/pingora_floor"
for round in $(seq "$rounds"); do
  run a_direct http://127.0.0.1:18181/data.json ""
  run b_nginx_proxy http://127.0.0.1:18282/data.json "$proxy_workers"
  for t in $threads_list; do
    sfx=""; [ "$threads_list" = "$t" ] || sfx="@$t"
    if [ -x "$floor_bin" ]; then
      "$floor_bin" 127.0.0.1:18383 127.0.0.1:18181 "$t" >/dev/null 2>&1 &
      floor_pid=$!
      pids+=("$floor_pid")
      until curl -sf http://127.0.0.1:18383/data.json >/dev/null 2>&1; do sleep 0.005; done
      run g_pingora_floor$sfx http://127.0.0.1:18383/data.json "$floor_pid"
      kill -INT "$floor_pid"; wait "$floor_pid" 2>/dev/null || true
    fi
    start_gateway "$work/memory-$t.toml"
    probe
    want c && run c_proxy_door$sfx http://127.0.0.1:18080/local/data.json "$gw_pid" -H "X-API-Key: $key"
    want e && run e_mcp_door$sfx http://127.0.0.1:13000/mcp "$gw_pid" -s "$work/mcp.lua"
    want j && open_session && run j_mcp_session$sfx http://127.0.0.1:13000/mcp "$gw_pid" -s "$work/mcp_session.lua"
    stop_gateway
    if [ -n "$base_bin" ]; then
      start_gateway "$work/memory-$t.toml" "$base_bin"
      probe
      want c && run c0_proxy_base$sfx http://127.0.0.1:18080/local/data.json "$gw_pid" -H "X-API-Key: $key"
      want e && run e0_mcp_base$sfx http://127.0.0.1:13000/mcp "$gw_pid" -s "$work/mcp.lua"
      stop_gateway
    fi
    want i && start_gateway "$work/tools-$t.toml" && probe &&
    run i_mcp_tool$sfx http://127.0.0.1:13000/mcp "$gw_pid" -s "$work/mcp_tool.lua"
    stop_gateway
    want h && start_gateway "$work/own-$t.toml" && probe &&
    run h_own_credential$sfx http://127.0.0.1:18080/local/data.json "$gw_pid" -H "X-API-Key: $key"
    stop_gateway
    want d && start_gateway "$work/redis-$t.toml" && probe &&
    run d_proxy_redis$sfx http://127.0.0.1:18080/local/data.json "$gw_pid" -H "X-API-Key: $key"
    stop_gateway
    want f && start_gateway "$work/traced-$t.toml" && probe &&
    run f_proxy_traced$sfx http://127.0.0.1:18080/local/data.json "$gw_pid" -H "X-API-Key: $key"
    stop_gateway
  done
done

echo "machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ *//'); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "wrk -t1 -c$conns, ${secs}s per run, $rounds rounds interleaved; medians"
printf '%-18s %10s %9s %9s %8s %8s %8s %9s %8s %8s\n' config "req/s" "p50 ms" "p99 ms" "cpu %" "usr us" "sys us" "rss MB" "vs a" "vs b"
sort -k1,1 -s "$work/results" | awk -v threads="$threads_list" '
  { n[$1]++; r[$1, n[$1]] = $2; p5[$1, n[$1]] = $3; p9[$1, n[$1]] = $4; c[$1, n[$1]] = $5; m[$1, n[$1]] = $6
    us[$1, n[$1]] = $7; sy[$1, n[$1]] = $8 }
  function med(arr, k, cnt,   i, j, t, v) {
    for (i = 1; i <= cnt; i++) v[i] = arr[k, i]
    for (i = 1; i <= cnt; i++) for (j = i + 1; j <= cnt; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
    return v[int((cnt + 1) / 2)]
  }
  END {
    split("a_direct b_nginx_proxy g_pingora_floor c0_proxy_base c_proxy_door h_own_credential d_proxy_redis e0_mcp_base e_mcp_door j_mcp_session i_mcp_tool f_proxy_traced", order, " ")
    nt = split(threads, ts, " ")
    a = med(r, "a_direct", n["a_direct"]); b = med(r, "b_nginx_proxy", n["b_nginx_proxy"])
    for (i = 1; i <= 12; i++) for (j = 1; j <= (i <= 2 ? 1 : nt); j++) {
      k = order[i] (i <= 2 || nt == 1 ? "" : "@" ts[j]); if (!(k in n)) continue
      rq = med(r, k, n[k])
      printf "%-18s %10.0f %9.3f %9.3f %8s %8s %8s %9s %7.0f%% %7.0f%%\n", k, rq, med(p5, k, n[k]), med(p9, k, n[k]), med(c, k, n[k]), med(us, k, n[k]), med(sy, k, n[k]), med(m, k, n[k]), rq / a * 100, rq / b * 100
    }
    # The targets of issue 21, per thread count: CPU per request is user + kernel time.
    print ""
    print "ratios (issue 21 targets):"
    for (j = 1; j <= nt; j++) {
      s = (nt == 1 ? "" : "@" ts[j])
      if (("c_proxy_door" s) in n && ("g_pingora_floor" s) in n) {
        cf = med(us, "g_pingora_floor" s, n["g_pingora_floor" s]) + med(sy, "g_pingora_floor" s, n["g_pingora_floor" s])
        cc = med(us, "c_proxy_door" s, n["c_proxy_door" s]) + med(sy, "c_proxy_door" s, n["c_proxy_door" s])
        printf "  %s thread(s) 1. proxy door CPU/req over the floor: %.2fx (target <= 1.15)\n", ts[j], cc / cf
      }
      if (("e_mcp_door" s) in n && ("c_proxy_door" s) in n) {
        ce = med(us, "e_mcp_door" s, n["e_mcp_door" s]) + med(sy, "e_mcp_door" s, n["e_mcp_door" s])
        cc = med(us, "c_proxy_door" s, n["c_proxy_door" s]) + med(sy, "c_proxy_door" s, n["c_proxy_door" s])
        printf "  %s thread(s) 2. MCP door over proxy door: throughput %.2fx (target >= 0.75), CPU/req %.2fx (target <= 1.5)\n", ts[j], med(r, "e_mcp_door" s, n["e_mcp_door" s]) / med(r, "c_proxy_door" s, n["c_proxy_door" s]), ce / cc
      }
      if (("j_mcp_session" s) in n && ("e_mcp_door" s) in n) {
        cj = med(us, "j_mcp_session" s, n["j_mcp_session" s]) + med(sy, "j_mcp_session" s, n["j_mcp_session" s])
        ce = med(us, "e_mcp_door" s, n["e_mcp_door" s]) + med(sy, "e_mcp_door" s, n["e_mcp_door" s])
        printf "  %s thread(s) 2. legacy session over stateless tools/call: throughput %.2fx, CPU/req %.2fx (target: within 10%%)\n", ts[j], med(r, "j_mcp_session" s, n["j_mcp_session" s]) / med(r, "e_mcp_door" s, n["e_mcp_door" s]), cj / ce
      }
      if (("d_proxy_redis" s) in n && ("c_proxy_door" s) in n) {
        printf "  %s thread(s) 5. Redis limiter over memory limiter throughput: %.2fx (target >= 0.85)\n", ts[j], med(r, "d_proxy_redis" s, n["d_proxy_redis" s]) / med(r, "c_proxy_door" s, n["c_proxy_door" s])
      }
    }
    if (nt >= 2) {
      split("c_proxy_door e_mcp_door", doors, " ")
      for (d = 1; d <= 2; d++) {
        lo = doors[d] "@" ts[1]; hi = doors[d] "@" ts[nt]
        if (!(lo in n) || !(hi in n)) continue
        printf "  3. %s CPU/req from %s to %s threads: %.2fx (target <= 1.15)\n", doors[d], ts[1], ts[nt], (med(us, hi, n[hi]) + med(sy, hi, n[hi])) / (med(us, lo, n[lo]) + med(sy, lo, n[lo]))
      }
    }
  }'
[ -f "$work/redis_us" ] && echo "redis-server CPU per decision in d: $(sort -n "$work/redis_us" | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}') us (median)"

# Start-up, idle memory, and memory at 256 connections (the last thread count), per binary.
for b in "$bin" ${base_bin:+"$base_bin"}; do
  start_gateway "$work/memory-$gw_threads.toml" "$b"
  sleep 1
  idle=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$gw_pid/status")
  wrk -t2 -c256 -d"${secs}s" -H "X-API-Key: $key" http://127.0.0.1:18080/local/data.json >/dev/null
  peak=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$gw_pid/status")
  stop_gateway
  echo "gateway $b: ready ${ready_ms} ms after exec; idle RSS ${idle} MB; peak RSS ${peak} MB after 256 connections"
done
