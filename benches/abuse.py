#!/usr/bin/env python3
"""What abusive clients cost the gateway: resident memory and whether health checks answer.

    cargo build --release && python3 benches/abuse.py

Starts the release binary on loopback ports with a config of its own, then, one scenario
at a time, measures the gateway's RSS (VmRSS, and VmHWM for the peak) before and after:
  denied-bodies   48 connections from a denied address each POST a 4 MiB body to /mcp
                  (finding 4: the body used to be read before the IP rules).
  sessions        5,000 legacy MCP `initialize` calls from one caller (finding 5: sessions
                  used to be unbounded); counts how many were refused with 429.
  slow-heads      600 connections each sending one header byte every 2 s to the proxy
                  door (finding 10); while they are open, /healthz on the admin listener is
                  timed, and the time until the gateway has closed them all is reported.
Standard library only. Prints one line per scenario.
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





def start(config):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "gw.toml")
    with open(path, "w") as f:
        f.write(config)
    p = subprocess.Popen([BIN, "serve", "-c", path], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    return p


def wait_ready(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("gateway not ready")


def config(mcp, proxy, admin, extra=""):
    return f"""
[server]
mcp_listen = "127.0.0.1:{mcp}"
proxy_listen = "127.0.0.1:{proxy}"
admin_listen = "127.0.0.1:{admin}"
threads = 2
{extra}

[auth]
required = false

[[apis]]
name = "local"
base_url = "http://127.0.0.1:9/"
allow_private_network = true
methods = ["GET"]
paths = ["/**"]
"""


def healthz_ms(port):
    t = time.time()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        ok = s.recv(100).startswith(b"HTTP/1.1 200")
    return (time.time() - t) * 1000 if ok else None


def denied_bodies():
    mcp, proxy, admin = free_port(), free_port(), free_port()
    gw = start(config(mcp, proxy, admin) + '\n[security]\nip_deny = ["127.0.0.1/32"]\n')
    wait_ready(admin)
    before = rss(gw.pid)["VmRSS"]
    body = b"{" + b" " * ((4 << 20) - 2) + b"}"
    statuses = []

    def one():
        try:
            with socket.create_connection(("127.0.0.1", mcp), timeout=20) as s:
                s.sendall(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                          b"Accept: application/json, text/event-stream\r\n"
                          + f"Content-Length: {len(body)}\r\n\r\n".encode())
                try:
                    s.sendall(body)
                except OSError:
                    pass
                statuses.append(s.recv(100).split(b" ")[1].decode())
        except OSError as e:
            statuses.append(type(e).__name__)

    threads = [threading.Thread(target=one) for _ in range(48)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    m = rss(gw.pid)
    gw.kill()
    print(f"denied-bodies  48 x 4 MiB to /mcp from a denied address: RSS {before:.1f} -> "
          f"{m['VmRSS']:.1f} MiB (peak {m['VmHWM']:.1f}); answers {sorted(set(statuses))}")


def sessions():
    mcp, proxy, admin = free_port(), free_port(), free_port()
    gw = start(config(mcp, proxy, admin))
    wait_ready(admin)
    before = rss(gw.pid)["VmRSS"]
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "abuse", "version": "1"}}}).encode()
    codes = {}
    t0 = time.time()
    s = socket.create_connection(("127.0.0.1", mcp))
    for _ in range(5000):
        s.sendall(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Accept: application/json, text/event-stream\r\n"
                  + f"Content-Length: {len(init)}\r\n\r\n".encode() + init)
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(65536)
        h, rest = head.split(b"\r\n\r\n", 1)
        code = h.split(b" ")[1].decode()
        codes[code] = codes.get(code, 0) + 1
        lower = h.lower()
        if b"content-length:" in lower:
            n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            while len(rest) < n:
                rest += s.recv(65536)
        else:  # an SSE answer to initialize: read to the end of its one event
            while not rest.endswith(b"\r\n0\r\n\r\n"):
                rest += s.recv(65536)
    took = time.time() - t0
    m = rss(gw.pid)
    gw.kill()
    print(f"sessions       5,000 initialize from one caller in {took:.1f} s: answers {codes}; "
          f"RSS {before:.1f} -> {m['VmRSS']:.1f} MiB (peak {m['VmHWM']:.1f})")


def slow_heads():
    mcp, proxy, admin = free_port(), free_port(), free_port()
    gw = start(config(mcp, proxy, admin, 'request_head_timeout = "10s"'))
    wait_ready(admin)
    before = rss(gw.pid)["VmRSS"]
    socks = []
    for _ in range(600):
        s = socket.create_connection(("127.0.0.1", proxy))
        s.sendall(b"GET /local/x HTTP/1.1\r\n")
        socks.append(s)
    t0 = time.time()
    health = []
    open_ = list(socks)
    while open_ and time.time() - t0 < 60:
        time.sleep(2)
        health.append(healthz_ms(admin))
        still = []
        for s in open_:
            try:
                s.sendall(b"X")
                s.setblocking(False)
                try:
                    if s.recv(4096) == b"":
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    continue
                finally:
                    s.setblocking(True)
                still.append(s)
            except OSError:
                continue
        open_ = still
    closed_after = time.time() - t0
    m = rss(gw.pid)
    gw.kill()
    worst = max((h for h in health if h is not None), default=None)
    print(f"slow-heads     600 connections dribbling a head to the proxy door: all closed after "
          f"{closed_after:.1f} s (request_head_timeout 10 s); /healthz answered "
          f"{sum(h is not None for h in health)}/{len(health)} times, slowest {worst:.1f} ms; "
          f"RSS {before:.1f} -> {m['VmRSS']:.1f} MiB (peak {m['VmHWM']:.1f})")


if __name__ == "__main__":
    if not os.access(BIN, os.X_OK):
        sys.exit(f"build first: cargo build --release ({BIN})")
    for name in sys.argv[1:] or ["denied-bodies", "sessions", "slow-heads"]:
        {"denied-bodies": denied_bodies, "sessions": sessions, "slow-heads": slow_heads}[name]()
