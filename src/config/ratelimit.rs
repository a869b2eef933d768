//! `[rate_limits]` as the runtime uses it: policies, the Redis store's settings and topology
//! (parsed once, while loading), and what to do while the store is down.

use std::time::Duration;

/// One validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Shown to callers (`RateLimit-Policy`, MCP `policy`), e.g. `api.github` or `per_user`.
    pub name: String,
    pub requests: u32,
    pub window: Duration,
    /// 1 ≤ burst ≤ requests; defaults to `requests`.
    pub burst: u32,
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
