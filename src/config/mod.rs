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

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

pub use crate::types::PathPattern;

mod access;
mod api;
mod approvals;
mod audit;
mod credentials;
pub mod lint;
mod openapi;
pub mod ratelimit;
mod response;
mod security;
mod server;
mod telemetry;
pub mod tls;
mod values;
pub use access::{
    ApiKey, AuthConfig, AuthMethod, Grant, HeaderLimits, IpRules, JwtIssuer, JwtKeys, OAuth2, Rbac,
    Role, Signatures,
};
use api::RawApi;
pub use api::{parse_base_url, Api, BaseUrl, Credential, CredentialPlacement, SUPPORTED_METHODS};
pub use approvals::{ApprovalMode, ApprovalRule, Approvals, Webhook};
use audit::{validate_audit, RawAudit};
pub use audit::{AuditConfig, AuditSink, OnFailure};
pub use credentials::{
    decode_key, ClientAuth, CredentialMode, CredentialStoreConfig, DynamicCredential, OAuthClient,
    OnMissing, StoreKind, TokenExchange, UserOAuth,
};
pub use openapi::{DocumentSource, OnChange, OpenApiConfig, OperationFilter};
use ratelimit::RawRateLimits;
use ratelimit::{rate_policy, RawRateLimit};
pub use ratelimit::{topology, OnError, Policy, RateLimits, RedisSettings, Topology};
pub use response::{BinaryMode, Query, Redaction, ResponseShaping, SecretKind};
pub use security::RequestGuards;
use security::{RawEgress, RawSecurity};
pub use server::{BrowserRules, LogFormat, McpConfig, ProxyConfig, ServerConfig};
use server::{RawMcp, RawProxy, RawServer};
pub use telemetry::{MetricsConfig, OtlpProtocol, TracingConfig};
pub use tls::{Listener, TlsConfig};
pub use values::{interpolate, parse_duration, HumanDuration};
use values::{interpolate_value, positive};

/// The configuration the gateway runs on when `serve` or `stdio` get no `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/minimal.toml");

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

/// A TOML syntax error with where it is: `invalid TOML at line 3, column 9: …`, then the
/// line itself and a caret under the column.
fn toml_syntax_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    let Some(span) = e.span() else {
        return format!("invalid TOML: {message}");
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    format!(
        "invalid TOML at line {line_no}, column {column}: {message}\n    {line_no} | {line}\n    {} | {}^",
        " ".repeat(line_no.to_string().len()),
        " ".repeat(column - 1)
    )
}

/// serde's wording, for people: "unknown field `tmeout`, expected one of …" (at the path
/// `apis[0].tmeout`) becomes "unknown key (did you mean `timeout`?)", "expected usize"
/// becomes "expected a whole number".
fn in_words(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, expected)) = rest.split_once('`') {
            let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let best = known
                .iter()
                .map(|k| (strsim::jaro_winkler(key, k), *k))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0));
            return match best {
                Some((_, k)) => format!("unknown key (did you mean `{k}`?)"),
                None if known.is_empty() => "unknown key: this table takes none".to_string(),
                None => format!("unknown key; the keys here are {}", known.join(", ")),
            };
        }
    }
    let mut out = message.to_string();
    for (from, to) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number (0 to 65535)"),
        ("expected u8", "expected a whole number (0 to 255)"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        (
            "expected a sequence",
            "expected a list, such as [\"a\", \"b\"]",
        ),
        ("expected a map", "expected a table"),
        ("invalid type: ", "wrong type: "),
    ] {
        out = out.replace(from, to);
    }
    out
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

/// `[policy]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    mode: crate::types::RuleMode,
}

/// `[admin]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    role: Option<String>,
    #[serde(default)]
    console: bool,
}

/// The admin listener's access rule: every route but `/healthz`, `/readyz` and `/metrics`
/// needs a principal (authenticated as on the doors) holding `role`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Default `"admin"`.
    pub role: String,
    /// `[admin] console = true`: the web console at `/console/` (needs `[auth]` methods and
    /// a restart to change).
    pub console: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    mcp: RawMcp,
    #[serde(default)]
    proxy: RawProxy,
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
    credential_store: Option<credentials::RawCredentialStore>,
    #[serde(default)]
    approvals: Vec<approvals::RawApproval>,
    #[serde(default)]
    tracing: telemetry::RawTracing,
    #[serde(default)]
    metrics: telemetry::RawMetrics,
    #[serde(default)]
    log: server::RawLog,
    demo: Option<server::RawDemo>,
}

// ---------------------------------------------------------------------------------------
// Runtime types: validated, immutable, shared behind `Arc`.
// ---------------------------------------------------------------------------------------

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub mcp: McpConfig,
    pub proxy: ProxyConfig,
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
    /// `[security] explain_denials`: how much a refused caller is told of the rule.
    pub explain_denials: crate::types::ExplainDenials,
    /// `[admin]`: who may use the admin listener's routes beyond health and metrics.
    pub admin: AdminConfig,
    /// `[policy] mode`: `shadow` evaluates every policy rule (API rules, RBAC, rate limits)
    /// without enforcing it. Default `enforce`.
    pub policy_mode: crate::types::RuleMode,
    /// `[credential_store]`: where per-caller credentials live (`per_principal` and
    /// `user_oauth` APIs need it).
    pub credential_store: Option<CredentialStoreConfig>,
    /// `[[approvals]]`: calls that wait for a person.
    pub approvals: Approvals,
    /// `[log] format`.
    pub log_format: LogFormat,
    /// `[demo] listen`: where the built-in demo upstream answers (the embedded default only).
    pub demo: Option<SocketAddr>,
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
        // So do OpenAPI documents and the surface lock.
        if let Some(dir) = path.parent() {
            for api in &mut config.apis {
                let relative = matches!(
                    api.openapi.as_ref().map(|o| &o.source),
                    Some(DocumentSource::File(f)) if f.is_relative()
                );
                if relative {
                    let api = Arc::make_mut(api);
                    if let Some(DocumentSource::File(f)) =
                        api.openapi.as_mut().map(|o| &mut o.source)
                    {
                        *f = dir.join(&*f);
                    }
                }
            }
            if let Some(lock) = config.mcp.surface_lock.as_mut() {
                if lock.is_relative() {
                    *lock = dir.join(&*lock);
                }
            }
        }
        // So does a relative credential store.
        if let Some(StoreKind::Sqlite(p)) = config.credential_store.as_mut().map(|s| &mut s.kind) {
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
        let mut value: toml::Value = toml::from_str(text)
            .map_err(|e| ConfigErrors(vec![err("", toml_syntax_error(text, &e))]))?;
        let mut errors = Vec::new();
        interpolate_value(&mut value, "", env, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ConfigErrors(vec![err(path, in_words(&e.into_inner().to_string()))])
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
// Validation
// ---------------------------------------------------------------------------------------

/// `env` also supplies the standard `OTEL_*` variables `[tracing]` falls back on.
fn validate(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();

    let server = server::validate_server(raw.server, &mut errors);
    let log_format = server::validate_log(raw.log, &mut errors);
    let demo = server::validate_demo(raw.demo, &mut errors);
    let mcp = server::validate_mcp(raw.mcp, server.mcp_listen, &mut errors);
    let proxy = server::validate_proxy(raw.proxy, server.proxy_listen, &mut errors);
    let auth = access::validate_auth(raw.auth, &mut errors);
    if raw.admin.console && auth.methods.is_empty() {
        errors.push(err(
            "admin.console",
            "the console is for principals holding admin.role: configure [auth] with api_key or \
             jwt methods first",
        ));
    }
    let (request, header_limits) = security::validate_request(raw.security.request, &mut errors);
    let ip_rules = IpRules {
        allow: access::parse_nets("security.ip_allow", raw.security.ip_allow, &mut errors),
        deny: access::parse_nets("security.ip_deny", raw.security.ip_deny, &mut errors),
        trusted_proxies: access::parse_nets(
            "security.trusted_proxies",
            raw.security.trusted_proxies,
            &mut errors,
        ),
        shadow: raw.security.ip_mode == crate::types::RuleMode::Shadow
            || raw.policy.mode == crate::types::RuleMode::Shadow,
    };
    let signatures = access::validate_signatures(raw.security.signatures, &mut errors);
    let explain_denials = raw.security.explain_denials.unwrap_or_default();

    let rate_limits = ratelimit::validate_rate_limits(raw.rate_limits, &mut errors);

    let (apis, names) = api::validate_apis(raw.apis, &mut errors);

    let credential_store = raw.credential_store.and_then(|s| {
        let redis_url = rate_limits.redis.as_ref().map(|r| r.url.as_str());
        credentials::validate_store(s, redis_url, env, &mut errors)
    });
    for (i, a) in apis.iter().enumerate() {
        if let Some(d) = &a.dynamic_credential {
            if d.mode.stored() && credential_store.is_none() {
                errors.push(err(
                    format!("apis[{i}].credentials.mode"),
                    format!(
                        "{:?} keeps each caller's credential in [credential_store], which is not configured",
                        d.mode.as_str()
                    ),
                ));
            }
        }
    }

    let rbac = access::validate_rbac(raw.rbac, &names, &mut errors);
    let role_names: Vec<String> = rbac.roles.iter().map(|r| r.name.clone()).collect();
    let approvals =
        approvals::validate_approvals(raw.approvals, &names, &role_names, env, &mut errors);
    let audit = validate_audit(raw.audit, &mut errors);
    let tracing = telemetry::validate_tracing(raw.tracing, env, &mut errors);
    let metrics = telemetry::validate_metrics(raw.metrics, &mut errors);
    let nameservers = security::validate_nameservers(raw.egress, &mut errors);
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
            proxy,
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
            explain_denials,
            admin: AdminConfig {
                role: raw.admin.role.unwrap_or_else(|| "admin".to_string()),
                console: raw.admin.console,
            },
            policy_mode: raw.policy.mode,
            credential_store,
            approvals,
            log_format,
            demo,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            _ => None,
        }
    }

    /// Modes are enums: a value that is not one of them is refused at its key path, naming
    /// the values that are.
    #[test]
    fn modes_outside_their_enum_are_named_by_key_path() {
        let api = "[[apis]]\nname = \"a\"\nbase_url = \"https://a.example\"\nmethods = [\"GET\"]\npaths = [\"/**\"]\n";
        for (section, key, expected) in [
            ("[rate_limits]\nstore = { kind = \"memcached\" }", "rate_limits.store.kind", "`memory` or `redis`"),
            (
                "[rate_limits]\nstore = { kind = \"redis\", url = \"redis://127.0.0.1:1\", on_error = \"panic\" }",
                "rate_limits.store.on_error",
                "`local`, `allow`, `deny`",
            ),
            ("[audit]\nsink = \"syslog\"", "audit.sink", "`file`, `stdout`, `sqlite`"),
            ("[audit]\non_failure = \"retry\"", "audit.on_failure", "`continue` or `block`"),
        ] {
            let e = Config::parse(&format!("{section}\n{api}"), &env).unwrap_err();
            assert_eq!(e.0.len(), 1, "{e}");
            assert_eq!(e.0[0].path, key, "{e}");
            assert!(e.0[0].message.contains(expected), "{e}");
        }
        let ok = Config::parse(
            &format!("[auth]\nrequired = false\n[audit]\nsink = \"stdout\"\non_failure = \"block\"\n{api}"),
            &env,
        )
        .unwrap();
        assert_eq!(ok.audit.on_failure, OnFailure::Block);
        assert_eq!(ok.audit.sink, AuditSink::Stdout);
    }

    /// The proxy door serves loopback names by default on a loopback listener and any name on
    /// another; origins need their scheme.
    #[test]
    fn proxy_hosts_default_by_listener_and_origins_need_a_scheme() {
        let api = "[auth]\nrequired = false\n[[apis]]\nname = \"a\"\nbase_url = \"https://a.example\"\nmethods = [\"GET\"]\npaths = [\"/**\"]\n";
        let local = Config::parse(api, &env).unwrap();
        assert_eq!(
            local.proxy.browser.allowed_hosts,
            ["localhost", "127.0.0.1", "::1"]
        );
        assert!(local.proxy.browser.allowed_origins.is_empty());
        assert!(!local.proxy.browser.loopback_origins);
        // The MCP door accepts loopback origins on a loopback listener until a list is set.
        assert!(local.mcp.browser.loopback_origins);
        let wide = Config::parse(
            &format!("[server]\nproxy_listen = \"0.0.0.0:8080\"\n{api}"),
            &env,
        )
        .unwrap();
        assert!(wide.proxy.browser.allowed_hosts.is_empty());
        let listed = Config::parse(
            &format!("[mcp]\nallowed_origins = [\"https://app.example:*\"]\n{api}"),
            &env,
        )
        .unwrap();
        assert!(!listed.mcp.browser.loopback_origins);
        let e = Config::parse(
            &format!("[proxy]\nallowed_origins = [\"app.example\"]\n{api}"),
            &env,
        )
        .unwrap_err();
        assert_eq!(e.0[0].path, "proxy.allowed_origins[0]");
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
        assert_eq!(c.apis[0].name, "demo");
        assert_eq!(c.demo, Some("127.0.0.1:18081".parse().unwrap()));
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Every example config shipped in `config/`.
        fn examples() -> Vec<String> {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
            let mut files: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            files
                .iter()
                .map(|p| std::fs::read_to_string(p).unwrap())
                .collect()
        }

        const HOSTILE: &[&str] = &[
            "\"\"",
            "-1",
            "0",
            "18446744073709551616",
            "9223372036854775807",
            "-0.0",
            "\"${UNSET_VARIABLE}\"",
            "[]",
            "{}",
            "\"\\u0000\"",
            "\"/**/**/**\"",
            "true",
            "\"0s\"",
            "\"999999999999999h\"",
            "\"18446744073709551615ms\"",
            "[[1]]",
            "\"http://[::1\"",
            "\"*\"",
            "\"\\r\\nX: y\"",
            "\"../../etc/passwd\"",
            "\"300.0.0.1/33\"",
            "\"GET\"",
            "[\"\"]",
            "{ a = 1 }",
            "nan",
            "inf",
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1500))]

            /// Whatever an operator gets wrong in a real config (a value of the wrong kind or
            /// size, a line lost or doubled, a file cut short), loading answers with errors
            /// that say what is wrong, and never panics.
            #[test]
            fn loading_a_damaged_config_never_panics(
                file in any::<prop::sample::Index>(),
                line in any::<prop::sample::Index>(),
                value in prop::sample::select(HOSTILE),
                how in 0u8..4,
                cut in any::<prop::sample::Index>(),
            ) {
                let examples = examples();
                let text = file.get(&examples);
                let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                let i = line.index(lines.len());
                let damaged = match how {
                    0 => {
                        if let Some((key, _)) = lines[i].split_once('=') {
                            lines[i] = format!("{key}= {value}");
                        }
                        lines.join("\n")
                    }
                    1 => {
                        lines.remove(i);
                        lines.join("\n")
                    }
                    2 => {
                        let copy = lines[i].clone();
                        lines.insert(i, copy);
                        lines.join("\n")
                    }
                    _ => {
                        let mut at = cut.index(text.len() + 1);
                        while !text.is_char_boundary(at) {
                            at -= 1;
                        }
                        text[..at].to_string()
                    }
                };
                if let Err(errors) = Config::parse(&damaged, &|_| Some("x".to_string())) {
                    prop_assert!(!errors.0.is_empty());
                    for e in &errors.0 {
                        prop_assert!(!e.message.is_empty(), "an error without a message: {e:?}");
                    }
                }
            }
        }
    }
}
