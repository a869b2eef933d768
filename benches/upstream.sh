# Sourced by the load scripts: the upstream they all measure against, one nginx worker on
# 127.0.0.1:18181 serving a 19-byte JSON document at /data.json (and answering OTLP exports
# at /v1/traces). Keep-alive connections are never closed by request count.
#
#   start_upstream DIR    configure and start it under DIR (pid in DIR/nginx.pid)
#   stop_upstream DIR     stop it and wait until it has exited
start_upstream() {
  local dir=$1
  mkdir -p "$dir/www" "$dir/logs"
  echo '{"ok":true,"n":42}' > "$dir/www/data.json"
  cat > "$dir/nginx.conf" <<CONF
worker_processes 1; daemon on; pid $dir/nginx.pid; error_log $dir/logs/error.log;
events { worker_connections 4096; }
http { access_log off; types { application/json json; }
  server { listen 127.0.0.1:18181; root $dir/www; keepalive_requests 1000000;
    location = /v1/traces { return 200; } } }
CONF
  nginx -p "$dir" -c nginx.conf
}

stop_upstream() {
  local dir=$1 pid
  [ -f "$dir/nginx.pid" ] || return 0
  pid=$(cat "$dir/nginx.pid")
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
}
