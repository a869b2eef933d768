//! Shared test harness: a real HTTP/1.1 upstream that records what reaches it, and the real
//! gateway binary started on free loopback ports.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const SECRET: &str = "upstream-secret-9f8e7d";
pub const QUERY_SECRET: &str = "query-secret-1a2b3c";

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Which TCP connection carried the request (numbered from 0 in accept order).
    pub conn: usize,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A real upstream HTTP server on a free loopback port. Paths ending in:
/// - `/hang`: never answers;
/// - `/big`: 300 000 bytes of text;
/// - `/slow-stream`: a chunked body whose second chunk comes 600 ms after the first;
/// - `/echo`: a JSON echo of the request, headers included;
/// - `/redirect`: 302 to a metadata address;
/// - anything else: `{"ok":true,"method":…,"target":…}`.
pub struct Upstream {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Answers a request with `(status, content type, body)`, or `None` for the default routes.
pub type Handler = Arc<dyn Fn(&Seen) -> Option<(u16, String, Vec<u8>)> + Send + Sync>;

impl Upstream {
    pub fn start() -> Upstream {
        Self::start_with(Arc::new(|_: &Seen| None))
    }

    /// An upstream whose answers come from `handler` first (a JWKS document, an
    /// introspection endpoint, a redirect), falling back to the default routes.
    pub fn start_with(handler: Handler) -> Upstream {
        let (listener, port) = bind_free_port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        thread::spawn(move || {
            for (i, conn) in listener.incoming().flatten().enumerate() {
                let s = s.clone();
                let h = handler.clone();
                thread::spawn(move || serve_conn(i, conn, s, h));
            }
        });
        Upstream { port, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

fn serve_conn(conn_id: usize, mut conn: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, handler: Handler) {
    let mut buf = Vec::new();
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 8192];
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("").to_string();
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut rest = buf.split_off(head_end + 4);
        buf.clear();
        let body = if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while rest.len() < len {
                let mut chunk = [0u8; 8192];
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => rest.extend_from_slice(&chunk[..n]),
                }
            }
            let extra = rest.split_off(len);
            buf = extra;
            rest
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            match read_chunked(&mut conn, rest) {
                Some((b, extra)) => {
                    buf = extra;
                    b
                }
                None => return,
            }
        } else {
            buf = rest;
            Vec::new()
        };
        let req = Seen {
            conn: conn_id,
            method: method.clone(),
            target: target.clone(),
            headers: headers.clone(),
            body,
        };
        seen.lock().unwrap().push(req.clone());

        let path = target.split('?').next().unwrap_or("");
        let custom = handler(&req);
        let (status, ctype, extra_headers, payload): (u16, &str, String, Vec<u8>) = if let Some((
            st,
            ct,
            body,
        )) = &custom
        {
            if let Some(to) = ct.strip_prefix("redirect:") {
                (
                    *st,
                    "text/plain",
                    format!("Location: {to}\r\n"),
                    body.clone(),
                )
            } else {
                (*st, ct.as_str(), String::new(), body.clone())
            }
        } else if path.ends_with("/hang") {
            thread::sleep(Duration::from_secs(30));
            return;
        } else if path.ends_with("/slow-stream") {
            // Two chunks 600 ms apart: a streaming proxy hands over the first at once.
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n";
            if conn
                .write_all(head.as_bytes())
                .and_then(|_| conn.flush())
                .is_err()
            {
                return;
            }
            thread::sleep(Duration::from_millis(600));
            let _ = conn.write_all(b"6\r\nsecond\r\n0\r\n\r\n");
            continue;
        } else if path.ends_with("/big") {
            (200, "text/plain", String::new(), vec![b'x'; 300_000])
        } else if path.ends_with("/echo") {
            let v = serde_json::json!({
                "method": req.method,
                "target": req.target,
                "headers": req.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>(),
                "body": String::from_utf8_lossy(&req.body),
            });
            (
                200,
                "application/json",
                String::new(),
                v.to_string().into_bytes(),
            )
        } else if path.ends_with("/redirect") {
            (
                302,
                "text/plain",
                "Location: http://169.254.169.254/latest/meta-data/\r\n".to_string(),
                b"moved".to_vec(),
            )
        } else {
            let v = serde_json::json!({"ok": true, "method": method, "target": target});
            (
                200,
                "application/json",
                String::new(),
                v.to_string().into_bytes(),
            )
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra_headers}\r\n",
            payload.len()
        );
        if conn.write_all(resp.as_bytes()).is_err() || conn.write_all(&payload).is_err() {
            return;
        }
    }
}

fn read_chunked(conn: &mut TcpStream, mut data: Vec<u8>) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(&data, b"\r\n") {
                break i;
            }
            let mut chunk = [0u8; 8192];
            let n = conn.read(&mut chunk).ok().filter(|n| *n > 0)?;
            data.extend_from_slice(&chunk[..n]);
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16).ok()?;
        data.drain(..line_end + 2);
        while data.len() < size + 2 {
            let mut chunk = [0u8; 8192];
            let n = conn.read(&mut chunk).ok().filter(|n| *n > 0)?;
            data.extend_from_slice(&chunk[..n]);
        }
        body.extend_from_slice(&data[..size]);
        data.drain(..size + 2);
        if size == 0 {
            return Some((body, data));
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// A loopback port that was free a moment ago and that no other caller in this test process
/// has been given. The kernel may hand the same port to two `bind(0)` calls once the first
/// socket is closed, and two tests racing for one port saw each other's servers; the ledger
/// rules that out within a test binary (binaries run one after another).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<std::collections::HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(Default::default).insert(port) {
            return port;
        }
    }
}

/// A listener on a free loopback port, taken through `free_port`'s ledger so no gateway is
/// ever handed the same one.
pub fn bind_free_port() -> (TcpListener, u16) {
    loop {
        let port = free_port();
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return (l, port);
        }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_api-gateway-mcp")
}

/// A loopback port that refuses connections: bound (so nothing else can take it) but never
/// listening. Keep the socket alive for as long as the port must stay dead.
pub fn refusing_port() -> (socket2::Socket, u16) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (s, port)
}

/// The `[server]` and `[auth]` sections for a gateway on `(mcp, proxy, admin)` ports. Auth is
/// optional (anonymous callers get in), but a presented JWT ([`jwt`]) or [`API_KEY`] is
/// verified.
pub fn server_section(ports: (u16, u16, u16), threads: usize) -> String {
    format!("{}{}", listen_section(ports, threads), auth_section(false))
}

/// Only the `[server]` section.
pub fn listen_section((mcp, proxy, admin): (u16, u16, u16), threads: usize) -> String {
    format!(
        "[server]\nmcp_listen = \"127.0.0.1:{mcp}\"\nproxy_listen = \"127.0.0.1:{proxy}\"\n\
         admin_listen = \"127.0.0.1:{admin}\"\nthreads = {threads}\nshutdown_grace = \"1s\"\n\n"
    )
}

pub const JWT_SECRET: &str = "suite-jwt-secret-0123456789abcdef-0123";
pub const JWT_ISSUER: &str = "https://issuer.test";
pub const JWT_AUDIENCE: &str = "api-gateway-mcp";
pub const API_KEY: &str = "agm_suite-key-0123456789abcdefghijklmnopqrstuv";

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// `[auth]` with an HS256 issuer and one API key (`suite`, role `reader`).
pub fn auth_section(required: bool) -> String {
    format!(
        "[auth]\nrequired = {required}\nmethods = [\"bearer_token\", \"api_key\"]\n\
         [auth.jwt]\nsecret = \"{JWT_SECRET}\"\nissuer = \"{JWT_ISSUER}\"\n\
         audience = \"{JWT_AUDIENCE}\"\nalgorithms = [\"HS256\"]\n\
         [[auth.api_keys]]\nname = \"suite\"\nkey_sha256 = \"{}\"\nroles = [\"reader\"]\n\n",
        sha256_hex(API_KEY)
    )
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token from the suite's issuer: `sub`, `iss`, `aud`, `iat` and a 5-minute `exp`,
/// with `extra` claims merged over them (a `null` removes a claim).
pub fn jwt(extra: serde_json::Value) -> String {
    jwt_signed(extra, JWT_SECRET)
}

pub fn jwt_signed(extra: serde_json::Value, secret: &str) -> String {
    let mut claims = serde_json::json!({
        "sub": "alice", "iss": JWT_ISSUER, "aud": JWT_AUDIENCE,
        "iat": now_s(), "exp": now_s() + 300,
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(&k);
        } else {
            claims[k] = v;
        }
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// An HTTP client that returns redirects instead of following them, as the tests read them.
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `Authorization: Bearer` with a suite token for `sub` holding `roles`.
pub fn bearer_with_roles(sub: &str, roles: &[&str]) -> String {
    format!(
        "Bearer {}",
        jwt(serde_json::json!({"sub": sub, "roles": roles}))
    )
}

/// An `[[apis]]` entry for a GET-only API on the loopback test upstream, plus `extra` lines.
pub fn loopback_get_api(name: &str, up: u16, extra: &str) -> String {
    format!(
        "[[apis]]\nname = \"{name}\"\nbase_url = \"http://127.0.0.1:{up}\"\n\
         allow_private_network = true\nmethods = [\"GET\"]\npaths = [\"/**\"]\n{extra}\n"
    )
}

/// GETs a URL and returns the status code.
pub async fn get_status(c: &reqwest::Client, url: &str) -> u16 {
    c.get(url).send().await.unwrap().status().as_u16()
}

/// GETs a URL with one extra header (a credential, usually) and returns the status code.
pub async fn get_status_with(c: &reqwest::Client, url: &str, header: (&str, &str)) -> u16 {
    c.get(url)
        .header(header.0, header.1)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The standard test config: several APIs pointing at the test upstream.
pub fn test_config(up: u16, mcp: u16, proxy: u16, admin: u16) -> String {
    let server = server_section((mcp, proxy, admin), 2);
    format!(
        r#"
{server}
[mcp]
max_response_bytes = 65536

[security.request]
max_body_size = 1024
allowed_content_types = ["application/json"]

[[apis]]
name = "local"
description = "The test upstream"
base_url = "http://127.0.0.1:{up}/base"
allow_private_network = true
methods = ["GET", "POST"]
paths = ["/**"]
deny_paths = ["/secret/**"]
timeout = "1s"
credentials = {{ header = "X-Upstream-Key", value = "${{AGM_TEST_SECRET}}" }}

[[apis]]
name = "qapi"
base_url = "http://127.0.0.1:{up}"
allow_private_network = true
methods = ["GET"]
paths = ["/**"]
credentials = {{ query = "appid", value = "{QUERY_SECRET}" }}

[[apis]]
name = "readonly"
base_url = "http://127.0.0.1:{up}"
allow_private_network = true
methods = ["GET"]
paths = ["/public/**"]

[[apis]]
name = "guarded"
description = "Private address without allow_private_network: the SSRF guard refuses it"
base_url = "http://127.0.0.1:{up}"
methods = ["GET"]
paths = ["/**"]
"#
    )
}

/// The gateway binary running on free ports. Killed on drop.
pub struct Gateway {
    pub child: Child,
    pub mcp: u16,
    pub proxy: u16,
    pub admin: u16,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn start(upstream_port: u16) -> Gateway {
        Self::start_generated(|(mcp, proxy, admin)| test_config(upstream_port, mcp, proxy, admin))
    }

    /// Starts a gateway on fresh ports with the config `make` builds for them. A port can be
    /// taken by another process between `free_port` and the gateway's bind; the gateway then
    /// exits at once ("cannot listen"), and this retries with new ports.
    pub fn start_generated(make: impl Fn((u16, u16, u16)) -> String) -> Gateway {
        Self::start_generated_env(make, &[])
    }

    /// As [`Gateway::start_generated`], with extra environment variables for the process.
    pub fn start_generated_env(
        make: impl Fn((u16, u16, u16)) -> String,
        env: &[(&str, &str)],
    ) -> Gateway {
        for _ in 0..5 {
            let ports = (free_port(), free_port(), free_port());
            if let Some(g) = Self::try_start(make(ports), ports, env) {
                return g;
            }
        }
        panic!("gateway did not start after 5 attempts");
    }

    fn try_start(
        config: String,
        (mcp, proxy, admin): (u16, u16, u16),
        env: &[(&str, &str)],
    ) -> Option<Gateway> {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("AGM_TEST_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            // The log goes to gateway.log beside the config (read it with `Gateway::log`);
            // AGM_TEST_GATEWAY_LOGS=DIR keeps each gateway's log as DIR/gateway-PORT.log.
            .stderr(Stdio::from(
                std::fs::File::create(match std::env::var_os("AGM_TEST_GATEWAY_LOGS") {
                    Some(d) => std::path::Path::new(&d).join(format!("gateway-{mcp}.log")),
                    None => dir.path().join("gateway.log"),
                })
                .unwrap(),
            ))
            .spawn()
            .unwrap();
        let mut g = Gateway {
            child,
            mcp,
            proxy,
            admin,
            config_path,
            _dir: dir,
        };
        g.wait_ready().then_some(g)
    }

    /// Waits until all three ports accept connections; false if the process exited first.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            let ok = [self.admin, self.mcp, self.proxy]
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if ok {
                return true;
            }
            thread::sleep(Duration::from_millis(25));
        }
        panic!("gateway did not become ready");
    }

    /// What the gateway has logged so far (empty when AGM_TEST_GATEWAY_LOGS sends it
    /// elsewhere).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config_path.with_file_name("gateway.log")).unwrap_or_default()
    }

    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.proxy)
    }

    pub fn mcp_url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.mcp)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes to a port and returns the raw response (for requests no client library
/// would send, such as `..` or CR/LF in the target).
pub fn raw_http(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&out);
                if let Some(i) = text.find("\r\n\r\n") {
                    let len = text[..i]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if out.len() >= i + 4 + len {
                        break;
                    }
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

/// The status code of a raw HTTP response.
pub fn status_of(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A minimal legacy-session MCP client over Streamable HTTP, enough to drive the door.
pub struct McpSession {
    client: reqwest::Client,
    url: String,
    session: Option<String>,
    next_id: u64,
    /// Sent with every request (credentials, for instance).
    headers: Vec<(String, String)>,
}

impl McpSession {
    pub async fn connect(url: &str) -> McpSession {
        Self::connect_with(url, &[]).await
    }

    /// Connects sending `headers` on every request.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> McpSession {
        let mut s = McpSession {
            client: reqwest::Client::new(),
            url: url.to_string(),
            session: None,
            next_id: 1,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let init = s
            .request(
                "initialize",
                serde_json::json!({
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "rust-test", "version": "0"}
                }),
            )
            .await;
        assert!(init.get("result").is_some(), "initialize failed: {init}");
        s.notify("notifications/initialized").await;
        s
    }

    async fn post(&self, body: serde_json::Value) -> reqwest::Response {
        let mut req = self
            .client
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .json(&body);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(sid) = &self.session {
            req = req
                .header("mcp-session-id", sid)
                .header("mcp-protocol-version", "2025-06-18");
        }
        req.send().await.unwrap()
    }

    async fn notify(&self, method: &str) {
        let r = self
            .post(serde_json::json!({"jsonrpc": "2.0", "method": method}))
            .await;
        assert!(r.status().is_success(), "{method}: {}", r.status());
    }

    /// The legacy session id, once `initialize` has answered.
    pub fn session_id(&self) -> Option<String> {
        self.session.clone()
    }

    /// Sends a request and returns the JSON-RPC response message.
    pub async fn request(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let r = self
            .post(
                serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
            )
            .await;
        if let Some(sid) = r.headers().get("mcp-session-id") {
            self.session = Some(sid.to_str().unwrap().to_string());
        }
        let text = r.text().await.unwrap();
        parse_rpc_response(&text, id)
            .unwrap_or_else(|| panic!("no response with id {id} in {text:?}"))
    }

    /// Calls a tool and returns the `result` object.
    pub async fn call(&mut self, tool: &str, args: serde_json::Value) -> serde_json::Value {
        let msg = self
            .request(
                "tools/call",
                serde_json::json!({"name": tool, "arguments": args}),
            )
            .await;
        msg.get("result").cloned().unwrap_or(msg)
    }
}

/// A stateless 2026-07-28 `tools/call` of `api_gateway` with the client capabilities
/// `caps`, authenticated by the header `auth`; `extra` is merged into `params` (a request
/// state, input responses). Returns the JSON-RPC response.
pub async fn stateless_tool_call(
    gw: &Gateway,
    auth: (&str, &str),
    caps: serde_json::Value,
    args: serde_json::Value,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut params = serde_json::json!({
        "name": "api_gateway",
        "arguments": args,
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": caps,
                  "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}}
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        params[k] = v;
    }
    let body =
        serde_json::json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params});
    let r = reqwest::Client::new()
        .post(gw.mcp_url())
        .header(auth.0, auth.1)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "api_gateway")
        .json(&body)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    parse_rpc_response(&text, 7).unwrap_or_else(|| panic!("no response in {text}"))
}

/// The output schema a session's `tools/list` declares for `tool`.
pub async fn output_schema(mcp: &mut McpSession, tool: &str) -> serde_json::Value {
    let tools = mcp.request("tools/list", serde_json::json!({})).await;
    tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == tool)
        .unwrap()["outputSchema"]
        .clone()
}

/// Validates `instances` (`{name, value}` each) against a JSON Schema with the Python
/// `jsonschema` package (tests/clients/validate_schema.py); returns the errors.
pub fn validate_schema(
    schema: serde_json::Value,
    instances: Vec<serde_json::Value>,
) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = std::process::Command::new(tools_dir().join("venv/bin/python"))
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/clients/validate_schema.py"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            serde_json::json!({"schema": schema, "instances": instances})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["errors"].as_array().unwrap().clone()
}

/// Finds the JSON-RPC message with `id` in a JSON or SSE response body.
pub fn parse_rpc_response(text: &str, id: u64) -> Option<serde_json::Value> {
    let candidates: Vec<&str> = if text.trim_start().starts_with('{') {
        vec![text]
    } else {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .collect()
    };
    candidates
        .into_iter()
        .filter_map(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        .find(|v| v.get("id").and_then(|i| i.as_u64()) == Some(id))
}

/// A real DNS server on a loopback UDP port, answering A queries from a fixed table (and
/// AAAA queries with no records), for tests of the egress resolver path.
pub struct DnsServer {
    pub port: u16,
    pub queries: Arc<std::sync::atomic::AtomicUsize>,
}

impl DnsServer {
    pub fn start(records: Vec<(&'static str, Vec<std::net::Ipv4Addr>)>) -> DnsServer {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let q = queries.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                q.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Some(resp) = dns_answer(&buf[..n], &records) {
                    let _ = sock.send_to(&resp, from);
                }
            }
        });
        DnsServer { port, queries }
    }
}

fn dns_answer(q: &[u8], records: &[(&str, Vec<std::net::Ipv4Addr>)]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // The question: labels, then QTYPE and QCLASS.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question_end = i + 4;
    let name = labels.join(".");
    let found = records.iter().find(|(n, _)| *n == name);
    let answers: Vec<std::net::Ipv4Addr> = match (found, qtype) {
        (Some((_, ips)), 1) => ips.clone(),
        _ => Vec::new(),
    };
    let rcode = if found.is_some() { 0 } else { 3 }; // NXDOMAIN for unknown names
    let mut out = Vec::new();
    out.extend_from_slice(&q[0..2]); // id
    out.extend_from_slice(&[0x81, 0x80 | rcode]); // response, RD, RA
    out.extend_from_slice(&[0, 1]); // QDCOUNT
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // NSCOUNT, ARCOUNT
    out.extend_from_slice(q.get(12..question_end)?);
    for ip in answers {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

/// The `X-Signature*` headers for a request, per the canonical string in the README.
#[allow(clippy::too_many_arguments)]
pub fn signature_headers(
    key_id: &str,
    secret: &str,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    ts: u64,
    nonce: &str,
) -> Vec<(&'static str, String)> {
    use hmac::Mac;
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(body));
    let canonical =
        format!("AGM-HMAC-SHA256\n{key_id}\n{ts}\n{nonce}\n{method}\n{path}\n{query}\n{digest}");
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(canonical.as_bytes());
    vec![
        ("x-signature-key-id", key_id.to_string()),
        ("x-signature-timestamp", ts.to_string()),
        ("x-signature-nonce", nonce.to_string()),
        ("x-content-sha256", digest),
        ("x-signature", hex::encode(m.finalize().into_bytes())),
    ]
}

/// The gateway's `/metrics` text.
pub async fn scrape(gw: &Gateway) -> String {
    reqwest::get(format!("http://127.0.0.1:{}/metrics", gw.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one sample line of the gateway's `/metrics`, e.g.
/// `metric(&gw, "api_calls_total{api=\"local\",door=\"proxy\",method=\"GET\",status=\"200\"}")`;
/// 0 when the series does not exist yet.
pub async fn metric(gw: &Gateway, series: &str) -> f64 {
    scrape(gw)
        .await
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// The value of a counter once it has reached `want`, or its value after 5 s. Both doors
/// record metrics after the response has gone out, so a scrape right after the last response
/// can run ahead of the last increment; the caller still asserts the exact value.
pub async fn counter_at(gw: &Gateway, series: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = metric(gw, series).await;
        if v >= want || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM, then wait for the process to exit (it drains the doors and the audit queue).
/// Sends a signal (`-HUP`, `-TERM`, …) to the gateway process.
pub fn send_signal(gw: &Gateway, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig}");
}

pub fn terminate(gw: &mut Gateway) {
    send_signal(gw, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            assert!(status.success(), "graceful shutdown exits 0: {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A throwaway PKI made with the `openssl` CLI: a CA, a server certificate for 127.0.0.1, a
/// client certificate from the same CA, and a client certificate from another CA.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        for ca in ["ca", "rogue-ca"] {
            pki.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN={ca}"),
                "-keyout",
                &pki.path(&format!("{ca}.key")),
                "-out",
                &pki.path(&format!("{ca}.pem")),
            ]);
        }
        pki.issue(
            "server",
            "ca",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        );
        pki.issue("client", "ca", "agent-1", "extendedKeyUsage=clientAuth\n");
        pki.issue(
            "rogue",
            "rogue-ca",
            "agent-1",
            "extendedKeyUsage=clientAuth\n",
        );
        pki
    }

    /// `NAME.pem` and `NAME.key`, signed by `ca`.
    fn issue(&self, name: &str, ca: &str, cn: &str, ext: &str) {
        let key = self.path(&format!("{name}.key"));
        let csr = self.path(&format!("{name}.csr"));
        let extfile = self.path(&format!("{name}.ext"));
        std::fs::write(&extfile, ext).unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &self.path(&format!("{ca}.pem")),
            "-CAkey",
            &self.path(&format!("{ca}.key")),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &extfile,
            "-out",
            &self.path(&format!("{name}.pem")),
        ]);
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One HTTPS request through rustls, verifying the server against `ca_pem` (and presenting
/// `client` = (cert, key) PEM files, when given). Returns the status and body, or the TLS or
/// I/O error.
pub async fn https_request(
    port: u16,
    request: &str,
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<(u16, String), String> {
    use pingora::tls::{ClientConfig, RootCertStore, ServerName, TlsConnector};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    pingora::tls::load_ca_file_into_store(ca_pem, &mut roots).map_err(|e| e.to_string())?;
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let (certs, key) = pingora::tls::load_certs_and_key_files(cert, key)
                .map_err(|e| e.to_string())?
                .ok_or("no client cert")?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    match read {
        Ok(Ok(_)) => {}
        // A TLS 1.3 server refuses a client certificate after the handshake: the refusal
        // arrives on the first read.
        Ok(Err(e)) if out.is_empty() => return Err(e.to_string()),
        Ok(Err(_)) => {}
        Err(_) => return Err("timed out".into()),
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

pub fn https_get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
}

/// Where `scripts/setup.sh` installed the real MCP clients and the conformance suite:
/// `.tools/` (or `$AGM_TOOLS`).
pub fn tools_dir() -> PathBuf {
    let dir = std::env::var_os("AGM_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools"));
    assert!(
        dir.join("node-bin").exists() && dir.join("venv/bin/python").exists(),
        "MCP client tools are missing in {}: run scripts/setup.sh (the README's test command does)",
        dir.display()
    );
    dir
}

/// An upstream on a raw socket, for answers the shared one cannot give: a body written in two
/// parts with a pause between them, a compressed answer, a fixed body. Each request's head is
/// kept.
pub struct RawUpstream {
    pub port: u16,
    pub heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RawUpstream {
    /// `answer` gives the parts to write for a request head; parts after the first are
    /// written 150 ms apart.
    pub fn start(answer: impl Fn(&str) -> Vec<Vec<u8>> + Send + Sync + 'static) -> RawUpstream {
        let answer = std::sync::Arc::new(answer);
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let seen = seen.clone();
                let answer = answer.clone();
                std::thread::spawn(move || loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    seen.lock().unwrap().push(head.clone());
                    for (i, part) in answer(&head).iter().enumerate() {
                        if i > 0 {
                            std::thread::sleep(Duration::from_millis(150));
                        }
                        if conn.write_all(part).and_then(|()| conn.flush()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RawUpstream { port, heads }
    }
}

/// A real `redis-server` on a free loopback port, killed on drop.
pub struct Redis {
    pub child: std::process::Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Redis {
        Self::spawn(port, &[])
    }

    /// A `redis-server` on `port`, with `args` before the common ones (a config file first,
    /// then options).
    pub fn spawn(port: u16, args: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args(args)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/setup.sh installs it)");
        let r = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.try_cmd(&["PING"]).as_deref() != Some("+PONG\r\n") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    pub fn try_cmd(&self, args: &[&str]) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).to_string())
    }

    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|| panic!("redis {args:?} failed"))
    }

    pub fn dbsize(&self) -> u64 {
        self.cmd(&["DBSIZE"])
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The admin key of [`console_config`] (principal `key:ops`, role `admin`).
pub const CONSOLE_ADMIN_KEY: &str = "agm_console-admin-key-0123456789abcdefghij";

/// A console-enabled gateway: `w` on the test upstream with a static credential and a
/// limit of 3 calls a minute; readers may GET `w` (and POST refunds) but not `/private/**`
/// (rule `rbac.roles[0].deny[0]`); POSTs to `/refunds/**` wait for an admin's approval.
pub fn console_config(up: u16, ports: (u16, u16, u16)) -> String {
    format!(
        "{}{}[[auth.api_keys]]\nname = \"ops\"\nkey_sha256 = \"{}\"\nroles = [\"admin\"]\n\n\
         [admin]\nconsole = true\n\n\
         [[rbac.roles]]\nname = \"reader\"\nallow = [{{ api = \"w\", methods = [\"GET\"] }}, {{ api = \"w\", methods = [\"POST\"], paths = [\"/refunds/**\"] }}]\n\
         deny = [{{ api = \"w\", paths = [\"/private/**\"] }}]\n\n\
         [[rbac.roles]]\nname = \"admin\"\nallow = [{{ api = \"w\" }}]\n\n\
         [[apis]]\nname = \"w\"\nbase_url = \"http://127.0.0.1:{up}\"\nallow_private_network = true\n\
         methods = [\"GET\", \"POST\"]\npaths = [\"/**\"]\n\
         credentials = {{ header = \"X-Upstream-Key\", value = \"${{AGM_TEST_SECRET}}\" }}\n\
         rate_limit = {{ requests = 3, window = \"1m\" }}\n\n\
         [[approvals]]\nid = \"refunds\"\napi = \"w\"\nmethods = [\"POST\"]\npaths = [\"/refunds/**\"]\n\
         mode = \"external\"\napprovers = [\"admin\"]\n",
        listen_section(ports, 2),
        auth_section(true),
        sha256_hex(CONSOLE_ADMIN_KEY),
    )
}
