//! TOML configuration: the on-disk schema, `${ENV}` interpolation and validation into an
//! immutable [`Config`]. Every error names the key path it is about (`apis[2].base_url: …`).
//!
//! Loading happens in three steps so that each error can say where it is:
//! 1. the text is parsed as TOML into a `toml::Value`;
//! 2. `${VAR}` / `${VAR:-default}` are interpolated in every string value, walking the tree
//!    with its key path;
//! 3. the tree is deserialised into the raw schema (`deny_unknown_fields` everywhere) and
//!    validated into runtime types. Validation collects every error instead of stopping at
//!    the first, so `check` can list them all.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde::Deserialize;

pub use crate::types::PathPattern;

mod access;
pub mod ratelimit;
mod telemetry;
pub mod tls;
pub use access::{
    ApiKey, AuthConfig, AuthMethod, Grant, HeaderLimits, IpRules, JwtIssuer, JwtKeys, OAuth2, Rbac,
    Role, Signatures,
};
pub use ratelimit::{topology, OnError, Policy, RedisSettings, Topology};
pub use telemetry::{MetricsConfig, OtlpProtocol, TracingConfig};
pub use tls::{Listener, TlsConfig};

/// The configuration the gateway runs on when `serve` or `stdio` get no `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/minimal.toml");

/// One configuration problem, with the key path it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `apis[2].base_url`. Empty for whole-file errors.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All problems found in one configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// An error at a key path, for validators that live outside this module.
pub fn config_error(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    err(path, message)
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Raw schema: what the TOML file may contain. Unknown keys are rejected everywhere.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    mcp: RawMcp,
    auth: Option<access::RawAuth>,
    #[serde(default)]
    rbac: access::RawRbac,
    #[serde(default)]
    egress: RawEgress,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    security: RawSecurity,
    #[serde(default)]
    rate_limits: RawRateLimits,
    #[serde(default)]
    apis: Vec<RawApi>,
    #[serde(default)]
    tracing: telemetry::RawTracing,
    #[serde(default)]
    metrics: telemetry::RawMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimits {
    default: Option<RawRateLimit>,
    per_user: Option<RawRateLimit>,
    store: Option<RawStore>,
    legacy_headers: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    requests: u32,
    window: HumanDuration,
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: String,
    url: Option<String>,
    on_error: Option<String>,
    local_share: Option<f64>,
    timeout: Option<HumanDuration>,
    cooldown: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMcp {
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    max_response_bytes: Option<usize>,
    max_request_bytes: Option<usize>,
    legacy_sessions: Option<bool>,
    json_response: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    enabled: Option<bool>,
    sink: Option<String>,
    path: Option<String>,
    retention: Option<HumanDuration>,
    on_failure: Option<String>,
    buffer: Option<usize>,
}

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// JSON lines appended to a file (relative paths are resolved against the config file's
    /// directory).
    File(std::path::PathBuf),
    /// JSON lines on stdout (not with the stdio transport, which owns stdout).
    Stdout,
    /// Rows of an embedded SQLite database, queryable with `json_extract(event, '$.api')`.
    Sqlite(std::path::PathBuf),
}

/// `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub enabled: bool,
    pub sink: AuditSink,
    /// Records older than this are purged from the head of the file.
    pub retention: Option<Duration>,
    /// `on_failure = "block"`: refuse calls while the sink cannot be written.
    pub block_on_failure: bool,
    /// Events queued for the writer before the queue counts as full.
    pub buffer: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    nameservers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    #[serde(default)]
    request: RawRequestGuards,
    ip_allow: Option<Vec<String>>,
    ip_deny: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
    signatures: Option<access::RawSignatures>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequestGuards {
    max_body_size: Option<u64>,
    allowed_content_types: Option<Vec<String>>,
    max_headers: Option<usize>,
    max_header_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    name: String,
    base_url: String,
    description: Option<String>,
    methods: Option<Vec<String>>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    deny_paths: Vec<String>,
    timeout: Option<HumanDuration>,
    connect_timeout: Option<HumanDuration>,
    #[serde(default)]
    allow_private_network: bool,
    credentials: Option<RawCredentials>,
    max_response_bytes: Option<usize>,
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    endpoint_rate_limits: Vec<RawEndpointRateLimit>,
    #[serde(default)]
    require_signature: bool,
    follow_redirects: Option<u8>,
    cost_per_call: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpointRateLimit {
    path: String,
    requests: u32,
    window: HumanDuration,
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    header: Option<String>,
    query: Option<String>,
    value: String,
}

/// A duration written as `"500ms"`, `"10s"`, `"1m"`, `"2h"` or `"90d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `"<integer><unit>"` with unit `ms`, `s`, `m`, `h` or `d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || {
        format!("invalid duration {s:?}: expected e.g. \"500ms\", \"10s\", \"1m\", \"2h\", \"90d\"")
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(bad()),
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

// ---------------------------------------------------------------------------------------
// Runtime types: validated, immutable, shared behind `Arc`.
// ---------------------------------------------------------------------------------------

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub mcp: McpConfig,
    pub auth: AuthConfig,
    pub rbac: Rbac,
    pub ip_rules: IpRules,
    pub header_limits: HeaderLimits,
    pub signatures: Signatures,
    /// DNS servers for upstream names (`egress.nameservers`); empty = the system resolver.
    pub nameservers: Vec<SocketAddr>,
    pub audit: AuditConfig,
    pub request: RequestGuards,
    pub rate_limits: RateLimits,
    pub apis: Vec<Arc<Api>>,
    pub tracing: TracingConfig,
    pub metrics: MetricsConfig,
}

/// Rate-limit policies that are not tied to one API.
#[derive(Debug, Clone)]
pub struct RateLimits {
    /// Applies to each API that has no `rate_limit` of its own.
    pub default: Option<Policy>,
    /// Applies to each caller (principal) across all APIs.
    pub per_user: Option<Policy>,
    /// Also send `X-RateLimit-Limit/Remaining/Reset` on the proxy door. Default false.
    pub legacy_headers: bool,
    /// `None`: in memory, per process (the default). `Some`: the shared Redis store.
    pub redis: Option<RedisSettings>,
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
}

/// MCP door settings.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// `Host` values accepted on the MCP listener (DNS-rebinding guard).
    /// Default: `localhost`, `127.0.0.1`, `::1` and the listener's own IP.
    pub allowed_hosts: Vec<String>,
    /// Browser `Origin`s accepted. Default empty: any request carrying an `Origin` is refused.
    pub allowed_origins: Vec<String>,
    /// Upstream response bytes returned to the model before `truncated` is set. Default 1 MiB.
    pub max_response_bytes: usize,
    /// Largest JSON-RPC request body accepted. Default 4 MiB.
    pub max_request_bytes: usize,
    /// Keep legacy (`initialize`) sessions in memory. Default true.
    pub legacy_sessions: bool,
    /// Answer a stateless request with one `application/json` body instead of an SSE
    /// stream, when the reply is a single message. Default true.
    pub json_response: bool,
}

/// Request body guards applied on both doors.
#[derive(Debug, Clone)]
pub struct RequestGuards {
    /// Largest request body in bytes. Default 1 MiB.
    pub max_body_size: u64,
    /// Allowed media types for requests with a body (lower-case essence, no parameters).
    /// Empty means any.
    pub allowed_content_types: Vec<String>,
}

/// One allow-listed upstream API.
#[derive(Debug, Clone)]
pub struct Api {
    pub name: String,
    pub base: BaseUrl,
    pub description: String,
    pub methods: Vec<Method>,
    pub paths: Vec<PathPattern>,
    pub deny_paths: Vec<PathPattern>,
    /// Total deadline for one upstream exchange. Default 30 s.
    pub timeout: Duration,
    /// TCP (+TLS) connect deadline. Default 5 s.
    pub connect_timeout: Duration,
    /// Allow private, loopback and link-local destinations. Default false.
    pub allow_private_network: bool,
    pub credential: Option<Credential>,
    /// Overrides `mcp.max_response_bytes` for this API.
    pub max_response_bytes: Option<usize>,
    /// This API's limit, named `api.NAME`; when absent `rate_limits.default` applies.
    pub rate_limit: Option<Policy>,
    /// Extra limits for paths matching a pattern, named `api.NAME:PATTERN`, checked on top of
    /// the API's limit.
    pub endpoint_rate_limits: Vec<(PathPattern, Policy)>,
    /// Calls to this API must carry a valid request signature.
    pub require_signature: bool,
    /// Redirects followed on the MCP door (0 = returned to the caller). At most 3.
    pub follow_redirects: u8,
    /// What one call costs, for the `api_cost_total` business metric.
    pub cost_per_call: Option<f64>,
}

/// A parsed `base_url`: where an API lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub tls: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (`""` for the root).
    pub path: String,
    /// The URL as written, for matching the MCP `api` argument.
    pub original: String,
}

impl BaseUrl {
    /// The base path as a request target (`/` for the root), for the gateway's own requests
    /// to an identity provider.
    pub fn request_path(&self) -> String {
        if self.path.is_empty() {
            "/".to_string()
        } else {
            self.path.clone()
        }
    }

    /// The absolute URL of a request sent to this base (for resolving redirects).
    pub fn url_of(&self, path_and_query: &str) -> Option<url::Url> {
        let scheme = if self.tls { "https" } else { "http" };
        url::Url::parse(&format!(
            "{scheme}://{}{path_and_query}",
            self.host_header()
        ))
        .ok()
    }

    /// The value for the upstream `Host` header: the host, plus the port if not the default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Where an upstream credential goes.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialPlacement {
    Header(http::HeaderName),
    Query(String),
}

/// An upstream credential, injected by the gateway. Its value is never logged or shown.
#[derive(Clone)]
pub struct Credential {
    pub placement: CredentialPlacement,
    pub value: String,
    /// `value` as a header value (marked sensitive), parsed once while loading; `Some` for a
    /// header placement.
    pub header_value: Option<http::HeaderValue>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match &self.placement {
            CredentialPlacement::Header(h) => format!("header {h}"),
            CredentialPlacement::Query(q) => format!("query {q}"),
        };
        write!(f, "Credential({place}, value=<redacted>)")
    }
}

impl Config {
    /// Reads, interpolates and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![err(
                "",
                format!("cannot read {}: {e}", path.display()),
            )])
        })?;
        let mut config = Self::parse(&text, &|name| std::env::var(name).ok())?;
        // A relative audit path lives next to the config file.
        if let AuditSink::File(p) | AuditSink::Sqlite(p) = &mut config.audit.sink {
            if p.is_relative() {
                if let Some(dir) = path.parent() {
                    *p = dir.join(&*p);
                }
            }
        }
        Ok(config)
    }

    /// Parses and validates config text. `env` looks up variables for `${VAR}`.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| {
            ConfigErrors(vec![err(
                "",
                format!("invalid TOML: {}", e.message().trim()),
            )])
        })?;
        let mut errors = Vec::new();
        interpolate_value(&mut value, "", env, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ConfigErrors(vec![err(path, e.into_inner().to_string())])
        })?;
        validate(raw, env)
    }

    /// The API a URL belongs to (same scheme, host and port, under its base path), with the
    /// endpoint relative to that base. Used to re-check redirect targets. When several APIs
    /// share the base, `prefer` (the API being called) wins, then the longest base path.
    pub fn api_for_url(&self, url: &url::Url, prefer: &str) -> Option<(&Arc<Api>, String)> {
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let host = match url.host()? {
            url::Host::Domain(d) => d.to_ascii_lowercase(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        let port = url.port_or_known_default()?;
        let path = url.path();
        self.apis
            .iter()
            .filter(|a| {
                a.base.tls == tls && a.base.host.eq_ignore_ascii_case(&host) && a.base.port == port
            })
            .filter_map(|a| {
                let rest = path.strip_prefix(a.base.path.as_str())?;
                (rest.is_empty() || rest.starts_with('/')).then_some((a, rest))
            })
            .max_by_key(|(a, _)| (a.name == prefer, a.base.path.len()))
            .map(|(a, rest)| {
                let mut endpoint = if rest.is_empty() {
                    "/".to_string()
                } else {
                    rest.to_string()
                };
                if let Some(q) = url.query() {
                    endpoint.push('?');
                    endpoint.push_str(q);
                }
                (a, endpoint)
            })
    }

    /// Looks an API up by its name or its base URL as written in config.
    pub fn api(&self, name_or_url: &str) -> Option<&Arc<Api>> {
        let trimmed = name_or_url.trim_end_matches('/');
        self.apis
            .iter()
            .find(|a| a.name == name_or_url || a.base.original.trim_end_matches('/') == trimmed)
    }
}

// ---------------------------------------------------------------------------------------
// Interpolation
// ---------------------------------------------------------------------------------------

fn interpolate_value(
    v: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match v {
        toml::Value::String(s) => match interpolate(s, env) {
            Ok(out) => *s = out,
            Err(m) => errors.push(err(path, m)),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{path}[{i}]"), env, errors);
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                interpolate_value(item, &p, env, errors);
            }
        }
        _ => {}
    }
}

/// Replaces `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`.
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(after_escape) = after.strip_prefix("${") {
            out.push_str("${");
            rest = after_escape;
            continue;
        }
        let Some(body_start) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err(format!("unterminated ${{…}} in {s:?}"));
        };
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name {name:?} in ${{…}}"));
        }
        match (env(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
            ))
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

const DEFAULT_MCP_LISTEN: &str = "127.0.0.1:3000";
const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// The methods the `api_gateway` tool and the proxy door can forward.
pub const SUPPORTED_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

/// `env` also supplies the standard `OTEL_*` variables `[tracing]` falls back on.
fn validate(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();

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
    let mcp_listen = listen("mcp_listen", raw.server.mcp_listen, DEFAULT_MCP_LISTEN);
    let proxy_listen = listen(
        "proxy_listen",
        raw.server.proxy_listen,
        DEFAULT_PROXY_LISTEN,
    );
    let admin_listen = listen(
        "admin_listen",
        raw.server.admin_listen,
        DEFAULT_ADMIN_LISTEN,
    );
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
    let threads = match raw.server.threads {
        Some(0) => {
            errors.push(err("server.threads", "must be at least 1"));
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let server = ServerConfig {
        mcp_listen,
        proxy_listen,
        admin_listen,
        threads,
        shutdown_grace: {
            if raw.server.shutdown_grace.is_some() && raw.server.grace_period.is_some() {
                errors.push(err(
                    "server.grace_period",
                    "set grace_period or its older name shutdown_grace, not both",
                ));
            }
            raw.server
                .grace_period
                .or(raw.server.shutdown_grace)
                .map_or(Duration::from_secs(5), |d| d.0)
        },
        drain_delay: raw.server.drain_delay.map_or(Duration::ZERO, |d| d.0),
        tls: tls::validate(raw.server.tls, &mut errors),
        watch_config: raw.server.watch_config.unwrap_or(true),
        watch_interval: match raw.server.watch_interval {
            Some(d) if d.0 < Duration::from_millis(100) => {
                errors.push(err("server.watch_interval", "must be at least 100ms"));
                d.0
            }
            Some(d) => d.0,
            None => Duration::from_secs(2),
        },
    };

    let mut allowed_hosts = raw.mcp.allowed_hosts.unwrap_or_else(|| {
        let mut v: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        let ip = mcp_listen.ip();
        if !ip.is_unspecified() && !v.contains(&ip.to_string()) {
            v.push(ip.to_string());
        }
        v
    });
    allowed_hosts.retain(|h| !h.is_empty());
    let allowed_origins = raw.mcp.allowed_origins.unwrap_or_default();
    for (i, o) in allowed_origins.iter().enumerate() {
        if o != "null" && !(o.starts_with("http://") || o.starts_with("https://")) {
            errors.push(err(
                format!("mcp.allowed_origins[{i}]"),
                format!("{o:?} must include a scheme, e.g. \"https://app.example.com:443\""),
            ));
        }
    }
    let mcp = McpConfig {
        allowed_hosts,
        allowed_origins,
        max_response_bytes: positive(
            &mut errors,
            "mcp.max_response_bytes",
            raw.mcp.max_response_bytes,
            1 << 20,
        ),
        max_request_bytes: positive(
            &mut errors,
            "mcp.max_request_bytes",
            raw.mcp.max_request_bytes,
            4 << 20,
        ),
        legacy_sessions: raw.mcp.legacy_sessions.unwrap_or(true),
        json_response: raw.mcp.json_response.unwrap_or(true),
    };

    let auth = access::validate_auth(raw.auth, &mut errors);
    let guards = raw.security.request;
    let mut allowed_content_types = Vec::new();
    for (i, ct) in guards
        .allowed_content_types
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence.split('/').count() != 2 || essence.split('/').any(str::is_empty) {
            errors.push(err(
                format!("security.request.allowed_content_types[{i}]"),
                format!("{ct:?} is not a media type like \"application/json\""),
            ));
        } else {
            allowed_content_types.push(essence);
        }
    }
    let request = RequestGuards {
        max_body_size: guards.max_body_size.unwrap_or(1 << 20),
        allowed_content_types,
    };
    let header_limits = HeaderLimits {
        max_headers: positive(
            &mut errors,
            "security.request.max_headers",
            guards.max_headers,
            100,
        ),
        max_header_bytes: positive(
            &mut errors,
            "security.request.max_header_bytes",
            guards.max_header_bytes,
            32 << 10,
        ),
    };
    let ip_rules = IpRules {
        allow: access::parse_nets("security.ip_allow", raw.security.ip_allow, &mut errors),
        deny: access::parse_nets("security.ip_deny", raw.security.ip_deny, &mut errors),
        trusted_proxies: access::parse_nets(
            "security.trusted_proxies",
            raw.security.trusted_proxies,
            &mut errors,
        ),
    };
    let signatures = access::validate_signatures(raw.security.signatures, &mut errors);

    let rl = raw.rate_limits;
    let mut redis = None;
    if let Some(store) = rl.store {
        let memory_only = [
            ("url", store.url.is_some()),
            ("on_error", store.on_error.is_some()),
            ("local_share", store.local_share.is_some()),
            ("timeout", store.timeout.is_some()),
            ("cooldown", store.cooldown.is_some()),
        ];
        match store.kind.as_str() {
            "memory" => {
                for (key, set) in memory_only {
                    if set {
                        errors.push(err(
                            format!("rate_limits.store.{key}"),
                            "only applies to kind = \"redis\"",
                        ));
                    }
                }
            }
            "redis" => {
                let url = store.url.unwrap_or_default();
                let topology = topology(&url).unwrap_or_else(|e| {
                    errors.push(err("rate_limits.store.url", e));
                    Topology::Standalone
                });
                let share = store.local_share.unwrap_or(1.0);
                if !(share > 0.0 && share <= 1.0) {
                    errors.push(err("rate_limits.store.local_share", "must be in (0, 1]"));
                }
                let on_error = match store.on_error.as_deref().unwrap_or("local") {
                    "local" => OnError::Local(share),
                    "allow" => OnError::Allow,
                    "deny" => OnError::Deny,
                    other => {
                        errors.push(err(
                            "rate_limits.store.on_error",
                            format!("{other:?} is not one of \"local\", \"allow\", \"deny\""),
                        ));
                        OnError::Deny
                    }
                };
                let timeout = store.timeout.map_or(Duration::from_millis(25), |d| d.0);
                if timeout.is_zero() {
                    errors.push(err("rate_limits.store.timeout", "must be greater than 0"));
                }
                redis = Some(RedisSettings {
                    url,
                    timeout,
                    cooldown: store.cooldown.map_or(Duration::from_secs(1), |d| d.0),
                    on_error,
                    topology,
                });
            }
            other => errors.push(err(
                "rate_limits.store.kind",
                format!("{other:?} is not a store; use \"memory\" or \"redis\""),
            )),
        }
    }
    let rate_limits = RateLimits {
        default: rl
            .default
            .and_then(|r| rate_policy("rate_limits.default", "default", r, &mut errors)),
        per_user: rl
            .per_user
            .and_then(|r| rate_policy("rate_limits.per_user", "per_user", r, &mut errors)),
        legacy_headers: rl.legacy_headers.unwrap_or(false),
        redis,
    };

    let mut apis = Vec::new();
    let mut names = HashSet::new();
    if raw.apis.is_empty() {
        errors.push(err(
            "apis",
            "no APIs are configured: add at least one [[apis]] entry",
        ));
    }
    for (i, a) in raw.apis.into_iter().enumerate() {
        let p = format!("apis[{i}]");
        if let Some(api) = validate_api(&p, a, &mut errors) {
            if !names.insert(api.name.clone()) {
                errors.push(err(
                    format!("{p}.name"),
                    format!("duplicate API name {:?}", api.name),
                ));
            }
            apis.push(Arc::new(api));
        }
    }

    let rbac = access::validate_rbac(raw.rbac, &names, &mut errors);
    let audit = validate_audit(raw.audit, &mut errors);
    let tracing = telemetry::validate_tracing(raw.tracing, env, &mut errors);
    let metrics = telemetry::validate_metrics(raw.metrics, &mut errors);
    let mut nameservers = Vec::new();
    for (i, ns) in raw
        .egress
        .nameservers
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let parsed = ns.parse::<SocketAddr>().or_else(|_| {
            ns.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Ok(a) => nameservers.push(a),
            Err(_) => errors.push(err(
                format!("egress.nameservers[{i}]"),
                format!("{ns:?} is not an IP address or IP:port"),
            )),
        }
    }
    if apis.iter().any(|a| a.require_signature) && signatures.keys.is_empty() {
        errors.push(err(
            "security.signatures",
            "an API sets require_signature = true but no signing keys are configured",
        ));
    }
    let mut auth = auth;
    for (i, k) in auth.api_keys.iter_mut().enumerate() {
        // Entries name an API or, as in the product brief, give its base URL.
        for (j, a) in k.allowed_apis.iter_mut().flatten().enumerate() {
            let trimmed = a.trim_end_matches('/').to_string();
            match apis
                .iter()
                .find(|api| api.name == *a || api.base.original.trim_end_matches('/') == trimmed)
            {
                Some(api) => *a = api.name.clone(),
                None => errors.push(err(
                    format!("auth.api_keys[{i}].allowed_apis[{j}]"),
                    format!("no API named {a:?} (or with that base_url) is configured"),
                )),
            }
        }
        if rbac.enabled() {
            for (j, r) in k.roles.iter().enumerate() {
                if !rbac.roles.iter().any(|role| role.name == *r) {
                    errors.push(err(
                        format!("auth.api_keys[{i}].roles[{j}]"),
                        format!("no role named {r:?} in [[rbac.roles]]"),
                    ));
                }
            }
        }
    }

    if errors.is_empty() {
        Ok(Config {
            server,
            mcp,
            auth,
            rbac,
            ip_rules,
            header_limits,
            signatures,
            nameservers,
            audit,
            request,
            rate_limits,
            apis,
            tracing,
            metrics,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

fn validate_audit(a: RawAudit, errors: &mut Vec<ConfigError>) -> AuditConfig {
    let sink = match a.sink.as_deref().unwrap_or("file") {
        "file" => AuditSink::File(a.path.unwrap_or_else(|| "audit.jsonl".into()).into()),
        "stdout" => {
            if a.path.is_some() {
                errors.push(err("audit.path", "only applies to sink = \"file\""));
            }
            AuditSink::Stdout
        }
        "sqlite" => AuditSink::Sqlite(a.path.unwrap_or_else(|| "audit.db".into()).into()),
        other => {
            errors.push(err(
                "audit.sink",
                format!("{other:?} is not one of \"file\", \"stdout\", \"sqlite\""),
            ));
            AuditSink::Stdout
        }
    };
    if a.retention.is_some() && sink == AuditSink::Stdout {
        errors.push(err(
            "audit.retention",
            "needs a stored sink (\"file\" or \"sqlite\")",
        ));
    }
    if a.retention.is_some_and(|r| r.0 < Duration::from_secs(60)) {
        errors.push(err("audit.retention", "must be at least \"1m\""));
    }
    let block_on_failure = match a.on_failure.as_deref().unwrap_or("continue") {
        "continue" => false,
        "block" => true,
        other => {
            errors.push(err(
                "audit.on_failure",
                format!("{other:?} is not one of \"continue\", \"block\""),
            ));
            false
        }
    };
    AuditConfig {
        enabled: a.enabled.unwrap_or(true),
        sink,
        retention: a.retention.map(|d| d.0),
        block_on_failure,
        buffer: positive(errors, "audit.buffer", a.buffer, 10_000),
    }
}

/// Validates `{ requests, window, burst }`: requests ≥ 1, window > 0, 1 ≤ burst ≤ requests.
fn rate_policy(
    path: &str,
    name: &str,
    r: RawRateLimit,
    errors: &mut Vec<ConfigError>,
) -> Option<Policy> {
    let before = errors.len();
    if r.requests == 0 {
        errors.push(err(format!("{path}.requests"), "must be at least 1"));
    }
    if r.window.0.is_zero() {
        errors.push(err(format!("{path}.window"), "must be greater than 0"));
    }
    let burst = r.burst.unwrap_or(r.requests);
    if burst == 0 || burst > r.requests {
        errors.push(err(
            format!("{path}.burst"),
            format!("must be between 1 and requests ({})", r.requests),
        ));
    }
    (errors.len() == before).then(|| Policy {
        name: name.to_string(),
        requests: r.requests,
        window: r.window.0,
        burst,
    })
}

fn positive(errors: &mut Vec<ConfigError>, key: &str, v: Option<usize>, default: usize) -> usize {
    match v {
        Some(0) => {
            errors.push(err(key, "must be greater than 0"));
            default
        }
        Some(n) => n,
        None => default,
    }
}

fn validate_api(p: &str, a: RawApi, errors: &mut Vec<ConfigError>) -> Option<Api> {
    let before = errors.len();
    let name_ok = !a.name.is_empty()
        && a.name.len() <= 64
        && a.name
            .starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && a.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok {
        errors.push(err(
            format!("{p}.name"),
            format!(
                "{:?} must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit \
                 (it is the first path segment on the proxy door)",
                a.name
            ),
        ));
    }

    let base = match parse_base_url(&a.base_url) {
        Ok(b) => Some(b),
        Err(m) => {
            errors.push(err(format!("{p}.base_url"), m));
            None
        }
    };

    let mut methods = Vec::new();
    for (j, m) in a
        .methods
        .unwrap_or_else(|| vec!["GET".into()])
        .iter()
        .enumerate()
    {
        let upper = m.to_ascii_uppercase();
        if SUPPORTED_METHODS.contains(&upper.as_str()) {
            if let Ok(method) = Method::from_bytes(upper.as_bytes()) {
                if !methods.contains(&method) {
                    methods.push(method);
                }
            }
        } else {
            errors.push(err(
                format!("{p}.methods[{j}]"),
                format!("{m:?} is not one of {}", SUPPORTED_METHODS.join(", ")),
            ));
        }
    }
    if methods.is_empty() && errors.len() == before {
        errors.push(err(
            format!("{p}.methods"),
            "at least one method is required",
        ));
    }

    let mut patterns = |key: &str, list: &[String]| -> Vec<PathPattern> {
        list.iter()
            .enumerate()
            .filter_map(|(j, s)| match PathPattern::parse(s) {
                Ok(pat) => Some(pat),
                Err(m) => {
                    errors.push(err(format!("{p}.{key}[{j}]"), m));
                    None
                }
            })
            .collect()
    };
    let paths = patterns("paths", &a.paths);
    let deny_paths = patterns("deny_paths", &a.deny_paths);
    if a.paths.is_empty() {
        errors.push(err(
            format!("{p}.paths"),
            "no paths are allowed (deny by default): list patterns such as \"/v1/**\", or \"/**\" for all",
        ));
    }

    let credential = a.credentials.and_then(|c| {
        let cp = format!("{p}.credentials");
        let placement = match (c.header, c.query) {
            (Some(h), None) => match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) if !crate::types::headers::is_framing_header(&name) => {
                    Some(CredentialPlacement::Header(name))
                }
                Ok(_) => {
                    errors.push(err(
                        format!("{cp}.header"),
                        format!("{h:?} cannot carry a credential"),
                    ));
                    None
                }
                Err(_) => {
                    errors.push(err(
                        format!("{cp}.header"),
                        format!("{h:?} is not a valid header name"),
                    ));
                    None
                }
            },
            (None, Some(q)) if !q.is_empty() => Some(CredentialPlacement::Query(q)),
            (None, Some(_)) => {
                errors.push(err(format!("{cp}.query"), "must not be empty"));
                None
            }
            _ => {
                errors.push(err(cp.clone(), "set exactly one of `header` or `query`"));
                None
            }
        };
        let mut header_value = None;
        if c.value.is_empty() {
            errors.push(err(
                format!("{cp}.value"),
                "is empty (did the environment variable expand to nothing?)",
            ));
        } else {
            match http::HeaderValue::from_str(&c.value) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    header_value = Some(v);
                }
                Err(_) => errors.push(err(
                    format!("{cp}.value"),
                    "contains characters not allowed in a header",
                )),
            }
        }
        placement.map(|placement| Credential {
            header_value: header_value
                .filter(|_| matches!(placement, CredentialPlacement::Header(_))),
            placement,
            value: c.value,
        })
    });

    let timeout = a.timeout.map_or(Duration::from_secs(30), |d| d.0);
    let connect_timeout = a.connect_timeout.map_or(Duration::from_secs(5), |d| d.0);
    if timeout.is_zero() {
        errors.push(err(format!("{p}.timeout"), "must be greater than 0"));
    }
    if connect_timeout.is_zero() {
        errors.push(err(
            format!("{p}.connect_timeout"),
            "must be greater than 0",
        ));
    }
    let rate_limit = a.rate_limit.and_then(|r| {
        rate_policy(
            &format!("{p}.rate_limit"),
            &format!("api.{}", a.name),
            r,
            errors,
        )
    });
    let mut endpoint_rate_limits = Vec::new();
    for (j, e) in a.endpoint_rate_limits.into_iter().enumerate() {
        let ep = format!("{p}.endpoint_rate_limits[{j}]");
        let pattern = match PathPattern::parse(&e.path) {
            Ok(pat) => Some(pat),
            Err(m) => {
                errors.push(err(format!("{ep}.path"), m));
                None
            }
        };
        let raw = RawRateLimit {
            requests: e.requests,
            window: e.window,
            burst: e.burst,
        };
        let policy = rate_policy(&ep, &format!("api.{}:{}", a.name, e.path), raw, errors);
        if let (Some(pattern), Some(policy)) = (pattern, policy) {
            endpoint_rate_limits.push((pattern, policy));
        }
    }
    let max_response_bytes = a.max_response_bytes;
    if max_response_bytes == Some(0) {
        errors.push(err(
            format!("{p}.max_response_bytes"),
            "must be greater than 0",
        ));
    }

    if a.cost_per_call
        .is_some_and(|c| !(c.is_finite() && c >= 0.0))
    {
        errors.push(err(format!("{p}.cost_per_call"), "must be a number ≥ 0"));
    }
    let follow_redirects = a.follow_redirects.unwrap_or(0);
    if follow_redirects > 3 {
        errors.push(err(
            format!("{p}.follow_redirects"),
            "at most 3 redirects may be followed",
        ));
    }

    if errors.len() != before {
        return None;
    }
    Some(Api {
        cost_per_call: a.cost_per_call,
        require_signature: a.require_signature,
        follow_redirects,
        description: a
            .description
            .unwrap_or_else(|| format!("The {} API", a.name)),
        name: a.name,
        base: base?,
        methods,
        paths,
        deny_paths,
        timeout,
        connect_timeout,
        allow_private_network: a.allow_private_network,
        credential,
        max_response_bytes,
        rate_limit,
        endpoint_rate_limits,
    })
}

impl Api {
    /// An internal destination the gateway itself calls (a JWKS document, an introspection
    /// endpoint): same egress path, SSRF guard and deadlines as an API, no caller-facing rules.
    pub fn internal(
        name: &str,
        url: &str,
        allow_private_network: bool,
        timeout: Duration,
    ) -> Result<Api, String> {
        let base = parse_base_url(url)?;
        Ok(Api {
            name: name.to_string(),
            base,
            description: String::new(),
            methods: vec![Method::GET, Method::POST],
            paths: Vec::new(),
            deny_paths: Vec::new(),
            timeout,
            connect_timeout: timeout.min(Duration::from_secs(5)),
            allow_private_network,
            credential: None,
            max_response_bytes: Some(1 << 20),
            rate_limit: None,
            endpoint_rate_limits: Vec::new(),
            require_signature: false,
            follow_redirects: 0,
            cost_per_call: None,
        })
    }
}

/// Parses and checks an API's `base_url`: http(s), a host, no credentials, query or fragment.
pub fn parse_base_url(s: &str) -> Result<BaseUrl, String> {
    let u = url::Url::parse(s).map_err(|e| format!("{s:?} is not a valid URL: {e}"))?;
    let tls = match u.scheme() {
        "https" => true,
        "http" => false,
        other => {
            return Err(format!(
                "scheme {other:?} is not supported; use http or https"
            ))
        }
    };
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not contain credentials; use `credentials` instead".into());
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("must not contain a query or fragment".into());
    }
    let host = match u.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err("has no host".into()),
    };
    let port = u
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    Ok(BaseUrl {
        tls,
        host,
        port,
        path: u.path().trim_end_matches('/').to_string(),
        original: s.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            _ => None,
        }
    }

    #[test]
    fn interpolation() {
        assert_eq!(
            interpolate("Bearer ${TOKEN}", &env).unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(interpolate("${MISSING:-x}y", &env).unwrap(), "xy");
        assert_eq!(interpolate("$${TOKEN}", &env).unwrap(), "${TOKEN}");
        assert_eq!(interpolate("cost $5", &env).unwrap(), "cost $5");
        let e = interpolate("${MISSING}", &env).unwrap_err();
        assert!(e.contains("MISSING"), "{e}");
        assert!(interpolate("${TOKEN", &env).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86400)
        );
        for bad in ["", "10", "s", "1.5s", "10 parsecs", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::parse(EMBEDDED_DEFAULT, &env).unwrap();
        assert_eq!(c.apis.len(), 1);
        assert_eq!(c.apis[0].name, "local");
        assert_eq!(c.server.mcp_listen.port(), 3000);
    }

    #[test]
    fn base_url_parsing() {
        let b = parse_base_url("https://api.github.com").unwrap();
        assert!(b.tls);
        assert_eq!(
            (b.host.as_str(), b.port, b.path.as_str()),
            ("api.github.com", 443, "")
        );
        let b = parse_base_url("http://[::1]:8080/v2/").unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.path.as_str()),
            ("::1", 8080, "/v2")
        );
        assert_eq!(b.host_header(), "[::1]:8080");
        assert!(parse_base_url("ftp://x").is_err());
        assert!(parse_base_url("https://u:p@x").is_err());
        assert!(parse_base_url("https://x/?a=1").is_err());
    }
}
