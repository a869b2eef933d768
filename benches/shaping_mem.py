#!/usr/bin/env python3
"""What large answers cost the MCP door in memory: 32 concurrent calls of a 5 MB JSON answer
(shaped to the 40,000-character budget) and of a 20 MB PDF (stored behind a resource_link).

    cargo build --release && python3 benches/shaping_mem.py

A threaded Python upstream serves both bodies; the release gateway reads each whole (the API
sets response.max_upstream_bytes = 32 MiB). Prints, per case, the gateway's RSS before, its
peak (VmHWM) after the 32 calls, the bound the issue sets (64 MB + 2 x the concurrent caps)
and how long the calls took. Standard library only.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BIN, free_port, rss  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ITEMS = [{"id": i, "name": f"item {i}", "text": "y" * 200} for i in range(20_000)]
JSON_BODY = json.dumps({"total_count": len(ITEMS), "items": ITEMS}).encode()
PDF_BODY = b"%PDF-1.7\n" + b"\xa5" * (20 * 1024 * 1024 - 9)


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body, ctype = (PDF_BODY, "application/pdf") if self.path.endswith(".pdf") else (JSON_BODY, "application/json")
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass




def call(port, endpoint, results):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "api_gateway", "arguments": {"api": "big", "endpoint": endpoint},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {},
                  "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"}}}}).encode()
    head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n"
            f"Mcp-Method: tools/call\r\nMcp-Name: api_gateway\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(head + body)
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    results.append(len(data))


def main():
    if not os.access(BIN, os.X_OK):
        sys.exit(f"build first: cargo build --release ({BIN})")
    up = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    mcp, proxy, admin = free_port(), free_port(), free_port()
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "gw.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[server]
mcp_listen = "127.0.0.1:{mcp}"
proxy_listen = "127.0.0.1:{proxy}"
admin_listen = "127.0.0.1:{admin}"
threads = 2
[auth]
required = false
[audit]
enabled = false
[[apis]]
name = "big"
base_url = "http://127.0.0.1:{up.server_address[1]}"
allow_private_network = true
methods = ["GET"]
paths = ["/**"]
timeout = "60s"
[apis.response]
max_upstream_bytes = 33554432
""")
    gw = subprocess.Popen([BIN, "serve", "-c", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        for name, endpoint, size in [("5 MB JSON", "/search", len(JSON_BODY)), ("20 MB PDF", "/doc.pdf", len(PDF_BODY))]:
            before = rss(gw.pid)["VmRSS"]
            results = []
            t0 = time.time()
            threads = [threading.Thread(target=call, args=(mcp, endpoint, results)) for _ in range(32)]
            [t.start() for t in threads]
            [t.join() for t in threads]
            took = time.time() - t0
            m = rss(gw.pid)
            bound = 64 + 2 * 32 * size / (1 << 20)
            print(f"{name:10}  32 concurrent calls in {took:.1f} s; replies {min(results)}-{max(results)} bytes; "
                  f"RSS {before:.1f} MiB before, peak {m['VmHWM']:.1f} MiB (bound {bound:.0f} MiB), {m['VmRSS']:.1f} MiB after")
    finally:
        gw.kill()
        up.shutdown()


if __name__ == "__main__":
    main()
