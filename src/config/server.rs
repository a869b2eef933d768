//! `[server]`, `[mcp]` and `[proxy]`: listeners, threads, shutdown, TLS, the file watch, the MCP
//! door's hosts, origins and size limits, and the proxy door's hosts and origins.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{err, positive, tls, ConfigError, HumanDuration, TlsConfig};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    mcp_listen: Option<String>,
    proxy_listen: Option<String>,
    admin_listen: Option<String>,
    threads: Option<usize>,
    shutdown_grace: Option<HumanDuration>,
    /// The same setting under the name the deployment docs use.
    grace_period: Option<HumanDuration>,
    drain_delay: Option<HumanDuration>,
    tls: Option<tls::RawTls>,
    watch_config: Option<bool>,
    watch_interval: Option<HumanDuration>,
    max_connections: Option<usize>,
    admin_max_connections: Option<usize>,
    request_head_timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMcp {
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    max_response_bytes: Option<usize>,
    max_request_bytes: Option<usize>,
    legacy_sessions: Option<bool>,
    json_response: Option<bool>,
    stateless_fast_path: Option<bool>,
    max_sessions: Option<usize>,
    max_sessions_per_caller: Option<usize>,
    session_idle_timeout: Option<HumanDuration>,
    resource_ttl: Option<HumanDuration>,
    max_resource_bytes: Option<usize>,
    public_url: Option<String>,
    surface_lock: Option<String>,
    on_mismatch: Option<String>,
}

/// Listeners and process settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// MCP Streamable HTTP at `/mcp`. Default `127.0.0.1:3000`.
    pub mcp_listen: SocketAddr,
    /// Reverse proxy `/{api}/{path}`. Default `127.0.0.1:8080`.
    pub proxy_listen: SocketAddr,
    /// `/healthz` and `/readyz`. Default `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// Worker threads for each of the proxy and MCP services. Default: the CPU count.
    pub threads: usize,
    /// How long a graceful shutdown (SIGTERM) lets calls in flight finish. Default 5 s.
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long the gateway keeps serving with `/readyz` failing, so load
    /// balancers stop sending new calls before the listeners close. Default 0 s.
    pub drain_delay: Duration,
    /// `[server.tls]`: TLS (and optionally mTLS) on the listeners it names.
    pub tls: Option<TlsConfig>,
    /// Reload when the config file's content changes. Default true (SIGHUP always reloads).
    pub watch_config: bool,
    /// How often the file is checked. Default 2 s.
    pub watch_interval: Duration,
    /// Connections each door listener (MCP, proxy) holds at once; the next is answered 503
    /// `connection_limit`. Default: derived from the process's descriptor limit at start
    /// (a quarter of it less a reserve, at most 10,000), so that both doors together, each
    /// connection with its upstream one, cannot take the descriptors the admin listener needs.
    pub max_connections: Option<usize>,
    /// Connections the admin listener holds at once. Default 64.
    pub admin_max_connections: usize,
    /// How long a request head may take: from the accept for a connection's first request,
    /// from its first byte for each later one. Then 408 `head_timeout` and the connection
    /// closes. Default 10 s.
    pub request_head_timeout: Duration,
}

/// `[proxy]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
}

/// Which `Host` and browser `Origin` values a door accepts, so that a web page of another
/// site cannot use a browser to reach the gateway (DNS rebinding, cross-site requests).
#[derive(Debug, Clone)]
pub struct BrowserRules {
    /// The config section the lists come from, for error messages: `mcp` or `proxy`.
    pub section: &'static str,
    /// `Host` values accepted (port ignored, case-insensitive); empty accepts any.
    pub allowed_hosts: Vec<String>,
    /// Browser `Origin`s accepted: `scheme://host:port`, `scheme://host:*` for any port.
    pub allowed_origins: Vec<String>,
    /// Also accept the loopback origins (`http(s)://localhost`, `127.0.0.1`, `[::1]`, any
    /// port): the MCP door's default on a loopback listener while `allowed_origins` is unset.
    pub loopback_origins: bool,
}

/// Proxy door settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// `Host` default on a loopback listener: `localhost`, `127.0.0.1`, `::1`; on any other
    /// listener: empty, which accepts any `Host` (name your Service there to be strict).
    /// `Origin` default: none: any request carrying an `Origin` is refused.
    pub browser: BrowserRules,
}

/// Validates `[proxy]`.
pub(super) fn validate_proxy(
    raw: RawProxy,
    proxy_listen: SocketAddr,
    errors: &mut Vec<ConfigError>,
) -> ProxyConfig {
    let mut allowed_hosts = raw.allowed_hosts.unwrap_or_else(|| {
        if proxy_listen.ip().is_loopback() {
            vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
        } else {
            Vec::new()
        }
    });
    allowed_hosts.retain(|h| !h.is_empty());
    ProxyConfig {
        browser: BrowserRules {
            section: "proxy",
            allowed_hosts,
            allowed_origins: origins("proxy", raw.allowed_origins, errors),
            loopback_origins: false,
        },
    }
}

/// A duration setting with a floor: below it is an error naming `key`.
fn at_least(
    errors: &mut Vec<ConfigError>,
    key: &str,
    raw: Option<HumanDuration>,
    min: Duration,
    default: Duration,
) -> Duration {
    match raw {
        Some(d) if d.0 < min => {
            let shown = if min.subsec_millis() != 0 || min.as_secs() == 0 {
                format!("{}ms", min.as_millis())
            } else {
                format!("{}s", min.as_secs())
            };
            errors.push(err(key, format!("must be at least {shown}")));
            d.0
        }
        Some(d) => d.0,
        None => default,
    }
}

/// `SECTION.allowed_origins`: each with its scheme (`null` is accepted as written); a port
/// of `*` accepts any port.
fn origins(section: &str, raw: Option<Vec<String>>, errors: &mut Vec<ConfigError>) -> Vec<String> {
    let list = raw.unwrap_or_default();
    for (i, o) in list.iter().enumerate() {
        if o != "null" && !(o.starts_with("http://") || o.starts_with("https://")) {
            errors.push(err(
                format!("{section}.allowed_origins[{i}]"),
                format!("{o:?} must include a scheme, e.g. \"https://app.example.com:443\""),
            ));
        }
    }
    list
}

/// MCP door settings.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// `Host` default: `localhost`, `127.0.0.1`, `::1` and the listener's own IP. `Origin`
    /// default: on a loopback listener the loopback origins (browser-based MCP clients on
    /// this machine), elsewhere none.
    pub browser: BrowserRules,
    /// The most body bytes read from an upstream for the MCP door, for every API that does
    /// not set `response.max_upstream_bytes`. Default 10 MiB.
    pub max_response_bytes: usize,
    /// Largest JSON-RPC request body accepted. Default 4 MiB.
    pub max_request_bytes: usize,
    /// Keep legacy (`initialize`) sessions in memory. Default true.
    pub legacy_sessions: bool,
    /// Answer a stateless request with one `application/json` body instead of an SSE
    /// stream, when the reply is a single message. Default true.
    pub json_response: bool,
    /// Serve a stateless 2026-07-28 `tools/call` of the common shape directly, without rmcp's
    /// per-request service loop (same answers; see `mcp::fast`). Default true.
    pub stateless_fast_path: bool,
    /// Legacy sessions held at once, in all. Default 10,000.
    pub max_sessions: usize,
    /// Legacy sessions one caller (principal) may hold at once. Default 100.
    pub max_sessions_per_caller: usize,
    /// A legacy session without traffic for this long is closed. Default 5 minutes.
    pub session_idle_timeout: Duration,
    /// How long a binary answer stored behind a `resource_link` stays readable. Default 10 min.
    pub resource_ttl: Duration,
    /// Bytes of stored binary answers held at once; the oldest go first. Default 256 MiB.
    pub max_resource_bytes: usize,
    /// The MCP listener's address as users' browsers reach it, without a trailing slash:
    /// the base of the connect links for per-user credentials. Default
    /// `http://{server.mcp_listen}` (`127.0.0.1` for an unspecified address).
    pub public_url: String,
    /// `public_url` was not set and is derived from the listener.
    pub public_url_default: bool,
    /// `surface_lock`: the lock file (`api-gateway-mcp lock`) the served tool surface must
    /// match; relative to the config file.
    pub surface_lock: Option<std::path::PathBuf>,
    /// `on_mismatch = "refuse"` (default: a start or reload whose surface differs fails)
    /// or `"warn"`.
    pub refuse_lock_mismatch: bool,
}

const DEFAULT_MCP_LISTEN: &str = "127.0.0.1:3000";
const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// Validates `[server]`: listen addresses (distinct), threads, grace and drain, TLS, the
/// file watch.
pub(super) fn validate_server(raw: RawServer, errors: &mut Vec<ConfigError>) -> ServerConfig {
    let mut listen = |key: &str, v: Option<String>, default: &str| -> SocketAddr {
        let s = v.unwrap_or_else(|| default.to_string());
        s.parse().unwrap_or_else(|_| {
            errors.push(err(
                format!("server.{key}"),
                format!("{s:?} is not an address like \"127.0.0.1:3000\""),
            ));
            // Placeholder so validation can continue; never used because errors is non-empty.
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    };
    let mcp_listen = listen("mcp_listen", raw.mcp_listen, DEFAULT_MCP_LISTEN);
    let proxy_listen = listen("proxy_listen", raw.proxy_listen, DEFAULT_PROXY_LISTEN);
    let admin_listen = listen("admin_listen", raw.admin_listen, DEFAULT_ADMIN_LISTEN);
    let listeners = [
        ("server.mcp_listen", mcp_listen),
        ("server.proxy_listen", proxy_listen),
        ("server.admin_listen", admin_listen),
    ];
    for (i, (key, addr)) in listeners.iter().enumerate() {
        if addr.port() != 0 && listeners[..i].iter().any(|(_, other)| other == addr) {
            errors.push(err(
                *key,
                format!("{addr} is already used by another listener"),
            ));
        }
    }
    let threads = match raw.threads {
        Some(0) => {
            errors.push(err("server.threads", "must be at least 1"));
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    ServerConfig {
        mcp_listen,
        proxy_listen,
        admin_listen,
        threads,
        shutdown_grace: {
            if raw.shutdown_grace.is_some() && raw.grace_period.is_some() {
                errors.push(err(
                    "server.grace_period",
                    "set grace_period or its older name shutdown_grace, not both",
                ));
            }
            raw.grace_period
                .or(raw.shutdown_grace)
                .map_or(Duration::from_secs(5), |d| d.0)
        },
        drain_delay: raw.drain_delay.map_or(Duration::ZERO, |d| d.0),
        tls: tls::validate(raw.tls, errors),
        watch_config: raw.watch_config.unwrap_or(true),
        watch_interval: at_least(
            errors,
            "server.watch_interval",
            raw.watch_interval,
            Duration::from_millis(100),
            Duration::from_secs(2),
        ),
        max_connections: raw
            .max_connections
            .map(|n| positive(errors, "server.max_connections", Some(n), n)),
        admin_max_connections: positive(
            errors,
            "server.admin_max_connections",
            raw.admin_max_connections,
            64,
        ),
        request_head_timeout: at_least(
            errors,
            "server.request_head_timeout",
            raw.request_head_timeout,
            Duration::from_millis(100),
            Duration::from_secs(10),
        ),
    }
}

/// Validates `[mcp]`; the default allowed hosts include the MCP listener's own address.
pub(super) fn validate_mcp(
    raw: RawMcp,
    mcp_listen: SocketAddr,
    errors: &mut Vec<ConfigError>,
) -> McpConfig {
    let mut allowed_hosts = raw.allowed_hosts.unwrap_or_else(|| {
        let mut v: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        let ip = mcp_listen.ip();
        if !ip.is_unspecified() && !v.contains(&ip.to_string()) {
            v.push(ip.to_string());
        }
        v
    });
    allowed_hosts.retain(|h| !h.is_empty());
    let loopback_origins = raw.allowed_origins.is_none() && mcp_listen.ip().is_loopback();
    let public_url_default = raw.public_url.is_none();
    let public_url = match raw.public_url {
        Some(u) => {
            let ok = url::Url::parse(&u).is_ok_and(|p| {
                matches!(p.scheme(), "http" | "https")
                    && p.host().is_some()
                    && p.query().is_none()
                    && p.fragment().is_none()
            });
            if !ok {
                errors.push(err(
                    "mcp.public_url",
                    format!("{u:?} is not an absolute http(s) URL such as \"https://gateway.example.com\""),
                ));
            }
            u.trim_end_matches('/').to_string()
        }
        None => {
            let mut addr = mcp_listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    let refuse_lock_mismatch = match raw.on_mismatch.as_deref() {
        None | Some("refuse") => true,
        Some("warn") => false,
        Some(other) => {
            errors.push(err(
                "mcp.on_mismatch",
                format!("{other:?} is not one of \"refuse\", \"warn\""),
            ));
            true
        }
    };
    if raw.on_mismatch.is_some() && raw.surface_lock.is_none() {
        errors.push(err(
            "mcp.on_mismatch",
            "applies only with mcp.surface_lock (the lock file to compare with)",
        ));
    }
    McpConfig {
        surface_lock: raw
            .surface_lock
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from),
        refuse_lock_mismatch,
        public_url,
        public_url_default,
        browser: BrowserRules {
            section: "mcp",
            allowed_hosts,
            allowed_origins: origins("mcp", raw.allowed_origins, errors),
            loopback_origins,
        },
        max_response_bytes: positive(
            errors,
            "mcp.max_response_bytes",
            raw.max_response_bytes,
            10 << 20,
        ),
        max_request_bytes: positive(
            errors,
            "mcp.max_request_bytes",
            raw.max_request_bytes,
            4 << 20,
        ),
        legacy_sessions: raw.legacy_sessions.unwrap_or(true),
        json_response: raw.json_response.unwrap_or(true),
        stateless_fast_path: raw.stateless_fast_path.unwrap_or(true),
        max_sessions: positive(errors, "mcp.max_sessions", raw.max_sessions, 10_000),
        max_sessions_per_caller: positive(
            errors,
            "mcp.max_sessions_per_caller",
            raw.max_sessions_per_caller,
            100,
        ),
        session_idle_timeout: at_least(
            errors,
            "mcp.session_idle_timeout",
            raw.session_idle_timeout,
            Duration::from_secs(1),
            Duration::from_secs(300),
        ),
        resource_ttl: at_least(
            errors,
            "mcp.resource_ttl",
            raw.resource_ttl,
            Duration::from_secs(1),
            Duration::from_secs(600),
        ),
        max_resource_bytes: positive(
            errors,
            "mcp.max_resource_bytes",
            raw.max_resource_bytes,
            256 << 20,
        ),
    }
}

/// `[log]`: how log lines are written (levels come from `RUST_LOG`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    format: Option<String>,
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One line per event, `key=value` fields; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

pub(super) fn validate_log(raw: RawLog, errors: &mut Vec<ConfigError>) -> LogFormat {
    match raw.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            errors.push(err(
                "log.format",
                format!("{other:?} is not one of \"text\", \"json\""),
            ));
            LogFormat::Text
        }
    }
}

/// `[demo]`: the built-in demo upstream, for trying the gateway with nothing else running.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDemo {
    listen: String,
}

pub(super) fn validate_demo(
    raw: Option<RawDemo>,
    errors: &mut Vec<ConfigError>,
) -> Option<SocketAddr> {
    let raw = raw?;
    match raw.listen.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => Some(a),
        Ok(_) => {
            errors.push(err(
                "demo.listen",
                "must be a loopback address such as \"127.0.0.1:18081\": the demo upstream is for trying the gateway on this machine",
            ));
            None
        }
        Err(_) => {
            errors.push(err(
                "demo.listen",
                format!(
                    "{:?} is not an address such as \"127.0.0.1:18081\"",
                    raw.listen
                ),
            ));
            None
        }
    }
}
