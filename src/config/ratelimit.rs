//! `[rate_limits]` as the runtime uses it: policies, the Redis store's settings and topology
//! (parsed once, while loading), and what to do while the store is down.

use std::time::Duration;

use serde::Deserialize;

use super::{err, ConfigError, HumanDuration};

/// One validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Shown to callers (`RateLimit-Policy`, MCP `policy`), e.g. `api.github` or `per_user`.
    pub name: String,
    pub requests: u32,
    pub window: Duration,
    /// 1 ≤ burst ≤ requests; defaults to `requests`.
    pub burst: u32,
    /// `mode = "shadow"`: counted, and a would-be refusal recorded, never a 429.
    pub shadow: bool,
}

/// What to do while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OnError {
    /// Use an in-process limiter with this share (0 < share ≤ 1) of every limit. The default.
    Local(f64),
    /// Admit every call (fail open).
    Allow,
    /// Refuse every call with 503 `rate_limiter_unavailable` (fail closed).
    Deny,
}

/// Settings of the Redis store.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:pass@]host:port[/db]`, or `rediss://…` for TLS (verified against the
    /// system roots, or the bundle `SSL_CERT_FILE` names).
    pub url: String,
    /// Hard budget for one decision. Default 25 ms.
    pub timeout: Duration,
    /// How long the breaker stays open after `failures` consecutive errors. Default 1 s.
    pub cooldown: Duration,
    pub on_error: OnError,
    /// The store's topology, parsed from `url` while loading.
    pub topology: Topology,
}

/// Where Redis is, as `rate_limits.store.url` names it.
#[derive(Debug, Clone, PartialEq)]
pub enum Topology {
    /// `redis://…` or `rediss://…`: one server.
    Standalone,
    /// `redis+cluster://[user:pass@]h1:p1,h2:p2`: the seed nodes of a Redis Cluster, each as
    /// a `redis://` URL with the credentials.
    Cluster(Vec<String>),
    /// `redis+sentinel://[user:pass@]s1:p1,s2:p2/master[/db]`: the Sentinels (plain URLs)
    /// and the monitored master's name; `master_url` carries the credentials, database and
    /// TLS mode for the master itself.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        master_url: String,
    },
}

/// Parses the store URL's topology. Errors name what is wrong, for `check`.
pub fn topology(url: &str) -> Result<Topology, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("{url:?} is not a URL"));
    };
    let (base, kind) = match scheme {
        "redis" | "rediss" | "redis+unix" => return Ok(Topology::Standalone),
        "redis+cluster" => ("redis", "cluster"),
        "rediss+cluster" => ("rediss", "cluster"),
        "redis+sentinel" => ("redis", "sentinel"),
        "rediss+sentinel" => ("rediss", "sentinel"),
        other => {
            return Err(format!(
                "{other:?} is not a Redis scheme; use redis://, rediss://, redis+cluster:// or redis+sentinel://"
            ))
        }
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(format!(
            "{scheme}:// needs a comma-separated list of host:port"
        ));
    }
    // Errors name the host, never the URL: it may hold a password.
    let check = |u: &str| {
        redis::IntoConnectionInfo::into_connection_info(u)
            .map(|_| ())
            .map_err(|e| format!("{:?}: {e}", u.rsplit('@').next().unwrap_or(u)))
    };
    if kind == "cluster" {
        if !path.is_empty() {
            return Err("a Redis Cluster has no database number: drop the path".into());
        }
        let nodes: Vec<String> = hosts
            .iter()
            .map(|h| format!("{base}://{userinfo}{h}"))
            .collect();
        nodes.iter().try_for_each(|n| check(n))?;
        return Ok(Topology::Cluster(nodes));
    }
    let (master, db) = path.split_once('/').unwrap_or((path, ""));
    if master.is_empty() {
        return Err(format!(
            "{scheme}://…/NAME needs the master's name, as the Sentinels monitor it"
        ));
    }
    let sentinels: Vec<String> = hosts.iter().map(|h| format!("{base}://{h}")).collect();
    sentinels.iter().try_for_each(|n| check(n))?;
    let master_url = format!("{base}://{userinfo}sentinel-master/{db}");
    check(&master_url)?;
    Ok(Topology::Sentinel {
        sentinels,
        master: master.to_string(),
        master_url,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimits {
    default: Option<RawRateLimit>,
    per_user: Option<RawRateLimit>,
    store: Option<RawStore>,
    legacy_headers: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub(super) requests: u32,
    pub(super) window: HumanDuration,
    pub(super) burst: Option<u32>,
    #[serde(default)]
    pub(super) mode: crate::types::RuleMode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    kind: StoreKind,
    url: Option<String>,
    on_error: Option<OnErrorMode>,
    local_share: Option<f64>,
    timeout: Option<HumanDuration>,
    cooldown: Option<HumanDuration>,
}

/// `rate_limits.store.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In memory, per process (the default when there is no `store`).
    Memory,
    /// Shared by every replica in Redis.
    Redis,
}

/// `rate_limits.store.on_error` as written; [`OnError`] once `local_share` is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnErrorMode {
    /// An in-process limiter at `local_share` of every limit. The default.
    Local,
    /// Admit every call.
    Allow,
    /// Refuse every call with 503.
    Deny,
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

/// Validates `{ requests, window, burst }`: requests ≥ 1, window > 0, 1 ≤ burst ≤ requests.
pub(super) fn rate_policy(
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
        shadow: r.mode == crate::types::RuleMode::Shadow,
    })
}

/// Validates `[rate_limits]`: the default and per-user policies and the store.
pub(super) fn validate_rate_limits(rl: RawRateLimits, errors: &mut Vec<ConfigError>) -> RateLimits {
    let mut redis = None;
    if let Some(store) = rl.store {
        let memory_only = [
            ("url", store.url.is_some()),
            ("on_error", store.on_error.is_some()),
            ("local_share", store.local_share.is_some()),
            ("timeout", store.timeout.is_some()),
            ("cooldown", store.cooldown.is_some()),
        ];
        match store.kind {
            StoreKind::Memory => {
                for (key, set) in memory_only {
                    if set {
                        errors.push(err(
                            format!("rate_limits.store.{key}"),
                            "only applies to kind = \"redis\"",
                        ));
                    }
                }
            }
            StoreKind::Redis => {
                let url = store.url.unwrap_or_default();
                let topology = topology(&url).unwrap_or_else(|e| {
                    errors.push(err("rate_limits.store.url", e));
                    Topology::Standalone
                });
                let share = store.local_share.unwrap_or(1.0);
                if !(share > 0.0 && share <= 1.0) {
                    errors.push(err("rate_limits.store.local_share", "must be in (0, 1]"));
                }
                let on_error = match store.on_error.unwrap_or(OnErrorMode::Local) {
                    OnErrorMode::Local => OnError::Local(share),
                    OnErrorMode::Allow => OnError::Allow,
                    OnErrorMode::Deny => OnError::Deny,
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
        }
    }
    RateLimits {
        default: rl
            .default
            .and_then(|r| rate_policy("rate_limits.default", "default", r, errors)),
        per_user: rl
            .per_user
            .and_then(|r| rate_policy("rate_limits.per_user", "per_user", r, errors)),
        legacy_headers: rl.legacy_headers.unwrap_or(false),
        redis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_parses_each_url_form_and_names_what_is_wrong() {
        assert_eq!(
            topology("redis://127.0.0.1:6379/2"),
            Ok(Topology::Standalone)
        );
        assert_eq!(
            topology("rediss+cluster://u:pw@a:7000,b:7001"),
            Ok(Topology::Cluster(vec![
                "rediss://u:pw@a:7000".into(),
                "rediss://u:pw@b:7001".into()
            ]))
        );
        assert_eq!(
            topology("redis+sentinel://:pw@s1:26379,s2:26379/main/3"),
            Ok(Topology::Sentinel {
                sentinels: vec!["redis://s1:26379".into(), "redis://s2:26379".into()],
                master: "main".into(),
                master_url: "redis://:pw@sentinel-master/3".into(),
            })
        );
        let e = topology("redis+sentinel://s1:26379").unwrap_err();
        assert!(e.contains("master's name"), "{e}");
        let e = topology("redis+cluster://a:1/0").unwrap_err();
        assert!(e.contains("no database"), "{e}");
        let e = topology("redis+cluster://a:1,,b:2").unwrap_err();
        assert!(e.contains("host:port"), "{e}");
        let e = topology("http://x").unwrap_err();
        assert!(e.contains("redis+cluster://"), "{e}");
        // A bad node is named by its host; the password never appears.
        let e = topology("redis+cluster://u:secret@a:notaport").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
