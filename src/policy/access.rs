//! The caller-facing checks of the pipeline: the client address behind trusted proxies, IP
//! allow/deny, header limits and request-smuggling shapes, and RBAC.

use std::net::IpAddr;

use http::{HeaderMap, Method};

use super::paths::RequestPath;
use crate::auth::Principal;
use crate::config::{Api, BrowserRules, HeaderLimits, IpRules, Rbac, Role};
use crate::error::{GatewayError, Reason};
use crate::types::{truncate_chars, Case};

/// The browser rule of both doors: a `Host` outside the door's `allowed_hosts` (when set)
/// and an `Origin` it does not accept are refused (403), so a page of another site cannot use
/// a visitor's browser to call the gateway (DNS rebinding, cross-site requests).
pub fn check_host_origin(rules: &BrowserRules, headers: &HeaderMap) -> Result<(), GatewayError> {
    let section = rules.section;
    if !rules.allowed_hosts.is_empty() {
        if let Some(host) = headers.get(http::header::HOST) {
            let host = host.to_str().unwrap_or("");
            let name = match host.strip_prefix('[') {
                // [v6]:port
                Some(v6) => v6.split(']').next().unwrap_or(""),
                None => host.rsplit_once(':').map_or(host, |(h, _)| h),
            };
            if !rules
                .allowed_hosts
                .iter()
                .any(|a| a.eq_ignore_ascii_case(name))
            {
                return Err(GatewayError::because(
                    Reason::HostNotAllowed,
                    format!(
                        "Host {:?} is not served here; add it to {section}.allowed_hosts",
                        truncate_chars(name, 64)
                    ),
                )
                .by_rule(format!("{section}.allowed_hosts")));
            }
        }
    }
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !origin_accepted(rules, origin) {
            return Err(GatewayError::because(
                Reason::OriginNotAllowed,
                format!(
                    "requests from the web origin {:?} are refused; add it to \
                     {section}.allowed_origins",
                    truncate_chars(origin, 64)
                ),
            )
            .by_rule(format!("{section}.allowed_origins")));
        }
    }
    Ok(())
}

/// Whether a browser `Origin` is accepted: listed as written (case-insensitive), listed with
/// port `*`, or a loopback origin where the rules accept those.
fn origin_accepted(rules: &BrowserRules, origin: &str) -> bool {
    // `scheme://host[:port]`, host possibly `[v6]`.
    let split = origin.split_once("://").map(|(scheme, rest)| {
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((h, p)) => (&rest[..h.len() + 2], p),
                None => (rest, ""),
            },
            None => rest.split_once(':').map_or((rest, ""), |(h, p)| (h, p)),
        };
        (scheme, host, port.strip_prefix(':').unwrap_or(port))
    });
    let listed = rules.allowed_origins.iter().any(|a| {
        a.eq_ignore_ascii_case(origin)
            || a.strip_suffix(":*").is_some_and(|base| {
                split.is_some_and(|(scheme, host, _)| {
                    base.len() == scheme.len() + 3 + host.len()
                        && base.eq_ignore_ascii_case(&format!("{scheme}://{host}"))
                })
            })
    });
    listed
        || (rules.loopback_origins
            && split.is_some_and(|(scheme, host, port)| {
                matches!(scheme, "http" | "https")
                    && ["localhost", "127.0.0.1", "[::1]"]
                        .iter()
                        .any(|l| l.eq_ignore_ascii_case(host))
                    && port.bytes().all(|b| b.is_ascii_digit())
            }))
}

/// The client's address. The peer's own address, unless the peer is a trusted proxy: then
/// `Forwarded` (else `X-Forwarded-For`) is read from the right, skipping trusted proxies, and
/// the first untrusted hop is the client. IPv4-mapped IPv6 addresses become IPv4.
///
/// `Forwarded` (RFC 7239) wins when both are present: a proxy that sets only `Forwarded`
/// passes its client's `X-Forwarded-For` on untouched, so believing that one would let the
/// client choose its own address.
pub fn client_ip(
    rules: &IpRules,
    peer: Option<IpAddr>,
    headers: Option<&HeaderMap>,
) -> Option<IpAddr> {
    let peer = peer.map(|ip| ip.to_canonical())?;
    let trusted = |ip: &IpAddr| rules.trusted_proxies.iter().any(|n| n.contains(ip));
    let Some(headers) = headers else {
        return Some(peer);
    };
    if !trusted(&peer) {
        return Some(peer);
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    let mut hop = |part: &str| match parse_hop(part) {
        Some(ip) => hops.push(ip),
        // An unparseable hop ends the trustworthy part of the chain.
        None => hops.clear(),
    };
    let text = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<&str>>()
    };
    let forwarded = text("forwarded");
    if !forwarded.is_empty() {
        for element in forwarded.iter().flat_map(|v| v.split(',')) {
            for pair in element.split(';') {
                if let Some((k, val)) = pair.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("for") {
                        hop(val);
                    }
                }
            }
        }
    } else {
        for part in text("x-forwarded-for").iter().flat_map(|v| v.split(',')) {
            hop(part);
        }
    }
    for ip in hops.iter().rev() {
        if !trusted(ip) {
            return Some(*ip);
        }
    }
    // Every hop was a trusted proxy (or none was given): the leftmost is the best we know.
    Some(hops.first().copied().unwrap_or(peer))
}

/// One hop: `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:443"`, `2001:db8::1`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest
            .split(']')
            .next()?
            .parse::<IpAddr>()
            .ok()
            .map(|ip| ip.to_canonical());
    }
    s.rsplit_once(':')
        .and_then(|(h, _)| h.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

/// `security.ip_deny` first, then `security.ip_allow` (when set, only those may call).
pub fn check_ip(rules: &IpRules, ip: Option<IpAddr>) -> Result<(), GatewayError> {
    let denied = || {
        GatewayError::forbidden("calls from this address are not allowed")
            .with_reason(crate::error::Reason::IpDenied)
    };
    match ip {
        Some(ip) => {
            if let Some(i) = rules.deny.iter().position(|n| n.contains(&ip)) {
                return Err(denied().by_rule(format!("security.ip_deny[{i}]")));
            }
            if !rules.allow.is_empty() && !rules.allow.iter().any(|n| n.contains(&ip)) {
                return Err(denied().by_rule("security.ip_allow"));
            }
            Ok(())
        }
        None if rules.allow.is_empty() && rules.deny.is_empty() => Ok(()),
        None => Err(denied().by_rule("security.ip_allow")),
    }
}

/// Header count and size limits, and the framing shapes used for request smuggling: both
/// `Content-Length` and `Transfer-Encoding`, several `Content-Length` values, or a
/// `Transfer-Encoding` other than `chunked`.
pub fn check_headers(limits: &HeaderLimits, headers: &HeaderMap) -> Result<(), GatewayError> {
    if headers.len() > limits.max_headers {
        return Err(GatewayError::headers_too_large(format!(
            "at most {} request headers are accepted",
            limits.max_headers
        )));
    }
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if bytes > limits.max_header_bytes {
        return Err(GatewayError::headers_too_large(format!(
            "request headers may total at most {} bytes",
            limits.max_header_bytes
        )));
    }
    let smuggling = |why: &str| {
        GatewayError::invalid_header(why).with_reason(crate::error::Reason::AmbiguousFraming)
    };
    let lengths: Vec<&http::HeaderValue> = headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .collect();
    let te: Vec<&http::HeaderValue> = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .collect();
    if !lengths.is_empty() && !te.is_empty() {
        return Err(smuggling(
            "a request must not carry both Content-Length and Transfer-Encoding",
        ));
    }
    if lengths.len() > 1 || lengths.iter().any(|v| v.as_bytes().contains(&b',')) {
        return Err(smuggling("a request must carry at most one Content-Length"));
    }
    if te.len() > 1
        || te.iter().any(|v| {
            !v.to_str()
                .is_ok_and(|s| s.trim().eq_ignore_ascii_case("chunked"))
        })
    {
        return Err(smuggling("Transfer-Encoding must be exactly \"chunked\""));
    }
    Ok(())
}

/// The smuggling shape a parser hides: Pingora, following RFC 9112 §6.3, drops
/// `Content-Length` when `Transfer-Encoding` is present, so the parsed headers no longer show
/// the conflict. The raw request head (HTTP/1) still does.
pub fn check_raw_framing(raw_head: Option<&[u8]>) -> Result<(), GatewayError> {
    let Some(raw) = raw_head else {
        return Ok(());
    };
    let (mut cl, mut te) = (false, false);
    for line in raw.split(|b| *b == b'\n') {
        let name = line.split(|b| *b == b':').next().unwrap_or(b"");
        let name = name.trim_ascii();
        cl |= name.eq_ignore_ascii_case(b"content-length");
        te |= name.eq_ignore_ascii_case(b"transfer-encoding");
    }
    if cl && te {
        return Err(GatewayError::invalid_header(
            "a request must not carry both Content-Length and Transfer-Encoding",
        )
        .with_reason(crate::error::Reason::AmbiguousFraming));
    }
    Ok(())
}

/// Role-based access over the configured APIs.
pub struct Access<'a> {
    pub rbac: &'a Rbac,
}

impl Access<'_> {
    fn roles<'r>(&'r self, p: &'r Principal) -> impl Iterator<Item = &'r Role> + 'r {
        self.rbac
            .roles
            .iter()
            .filter(move |r| p.roles.contains(&r.name))
    }

    fn key_allows_api(p: &Principal, api: &str) -> bool {
        p.allowed_apis
            .as_ref()
            .is_none_or(|list| list.iter().any(|a| a == api))
    }

    /// An API key with `allowed_apis` and no roles: the list itself is its grant.
    fn key_list_is_grant(p: &Principal) -> bool {
        p.roles.is_empty() && p.allowed_apis.is_some()
    }

    /// Whether the principal may call `method` on this path of the API, and if not, the rule
    /// that refuses. Deny rules win, and read the path as [`RequestPath`] says; allow rules
    /// compare as `case` says. The refusing rule is the key's `allowed_apis`, the deny rule
    /// that matched (`rbac.roles[i].deny[j]`, with its pattern), or `rbac.roles`
    /// when no grant of the caller's roles covers the call. With `all = false` only the
    /// enforced rules count (rules in `mode = "shadow"` neither refuse nor grant); with
    /// `all = true` every rule does.
    pub fn decide(
        &self,
        p: &Principal,
        api: &str,
        method: &Method,
        path: &RequestPath<'_>,
        case: Case,
        all: bool,
    ) -> Result<(), (String, Option<String>)> {
        if !Self::key_allows_api(p, api) {
            return Err(("auth.api_keys.allowed_apis".to_string(), None));
        }
        if !self.rbac.enabled() {
            return Ok(());
        }
        for (i, r) in self.rbac.roles.iter().enumerate() {
            if !p.roles.contains(&r.name) {
                continue;
            }
            for (j, g) in r.deny.iter().enumerate() {
                if (all || !g.shadow) && g.covers(api, method, |pat| path.denied_by(pat)) {
                    let shown = g
                        .paths
                        .iter()
                        .map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err((format!("rbac.roles[{i}].deny[{j}]"), Some(shown)));
                }
            }
        }
        let granted = self.roles(p).any(|r| {
            r.allow.iter().any(|g| {
                (all || !g.shadow) && g.covers(api, method, |pat| path.allowed_by(pat, case))
            })
        }) || Self::key_list_is_grant(p);
        if granted {
            Ok(())
        } else {
            Err(("rbac.roles".to_string(), None))
        }
    }

    /// The API's methods this principal may use somewhere on it: what `tools/list` and
    /// `list_apis` show. Empty means the API is hidden from the principal.
    pub fn visible_methods(&self, p: &Principal, api: &Api) -> Vec<Method> {
        if !Self::key_allows_api(p, &api.name) {
            return Vec::new();
        }
        if !self.rbac.enabled() || Self::key_list_is_grant(p) {
            return api.methods.clone();
        }
        api.methods
            .iter()
            .filter(|m| {
                let allowed = self.roles(p).any(|r| {
                    r.allow.iter().any(|g| {
                        g.covers_api(&api.name) && (g.methods.is_empty() || g.methods.contains(m))
                    })
                });
                // A deny rule that covers the whole API for this method hides it.
                let wholly_denied = self.roles(p).any(|r| {
                    r.deny.iter().any(|g| {
                        g.covers_api(&api.name)
                            && g.paths.is_empty()
                            && (g.methods.is_empty() || g.methods.contains(m))
                    })
                });
                allowed && !wholly_denied
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::PrincipalKind;
    use crate::config::Grant;
    use crate::types::PathPattern;

    fn rules(allow: &[&str], deny: &[&str], trusted: &[&str]) -> IpRules {
        let nets = |l: &[&str]| l.iter().map(|s| s.parse().unwrap()).collect();
        IpRules {
            allow: nets(allow),
            deny: nets(deny),
            trusted_proxies: nets(trusted),
            shadow: false,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let r = rules(&[], &[], &["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.1.1.1".parse().unwrap());
        // From an untrusted peer the header is ignored.
        assert_eq!(
            client_ip(&r, Some(ip("198.51.100.1")), Some(&h)),
            Some(ip("198.51.100.1"))
        );
        // From a trusted proxy, the rightmost untrusted hop is the client.
        assert_eq!(
            client_ip(&r, Some(ip("10.0.0.2")), Some(&h)),
            Some(ip("203.0.113.9"))
        );
        let mut f = HeaderMap::new();
        f.insert(
            "forwarded",
            "for=\"[2001:db8::7]:443\";proto=https".parse().unwrap(),
        );
        assert_eq!(
            client_ip(&r, Some(ip("10.0.0.2")), Some(&f)),
            Some(ip("2001:db8::7"))
        );
        // With both, Forwarded is believed: X-Forwarded-For may be the client's own words.
        f.insert("x-forwarded-for", "198.51.100.66".parse().unwrap());
        assert_eq!(
            client_ip(&r, Some(ip("10.0.0.2")), Some(&f)),
            Some(ip("2001:db8::7"))
        );
        // IPv4-mapped peers are normalised.
        assert_eq!(
            client_ip(&r, Some(ip("::ffff:192.0.2.1")), None),
            Some(ip("192.0.2.1"))
        );
    }

    #[test]
    fn deny_is_checked_before_allow() {
        let r = rules(&["10.0.0.0/8", "2001:db8::/32"], &["10.9.0.0/16"], &[]);
        assert!(check_ip(&r, Some(ip("10.1.2.3"))).is_ok());
        assert!(check_ip(&r, Some(ip("2001:db8::1"))).is_ok());
        assert_eq!(
            check_ip(&r, Some(ip("10.9.1.1")))
                .unwrap_err()
                .reason
                .map(crate::error::Reason::code),
            Some("ip_denied")
        );
        assert!(check_ip(&r, Some(ip("192.0.2.1"))).is_err());
        assert!(check_ip(&r, None).is_err());
        assert!(check_ip(&rules(&[], &[], &[]), None).is_ok());
    }

    #[test]
    fn smuggling_shapes_and_limits() {
        let limits = HeaderLimits {
            max_headers: 4,
            max_header_bytes: 200,
        };
        let mut h = HeaderMap::new();
        h.insert("content-length", "5".parse().unwrap());
        assert!(check_headers(&limits, &h).is_ok());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        assert_eq!(
            check_headers(&limits, &h)
                .unwrap_err()
                .reason
                .map(crate::error::Reason::code),
            Some("ambiguous_framing")
        );
        h.remove("transfer-encoding");
        h.append("content-length", "6".parse().unwrap());
        assert_eq!(
            check_headers(&limits, &h)
                .unwrap_err()
                .reason
                .map(crate::error::Reason::code),
            Some("ambiguous_framing")
        );
        let mut h = HeaderMap::new();
        h.insert("x-big", "a".repeat(300).parse().unwrap());
        assert_eq!(check_headers(&limits, &h).unwrap_err().kind.status(), 431);
        let mut h = HeaderMap::new();
        for i in 0..5 {
            h.insert(
                http::HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                "v".parse().unwrap(),
            );
        }
        assert_eq!(check_headers(&limits, &h).unwrap_err().kind.status(), 431);
    }

    #[test]
    fn rbac_deny_wins_and_key_lists_restrict() {
        let grant = |api: &str, methods: &[Method], paths: &[&str]| Grant {
            api: api.into(),
            methods: methods.to_vec(),
            paths: paths
                .iter()
                .map(|p| PathPattern::parse(p).unwrap())
                .collect(),
            shadow: false,
        };
        let rbac = Rbac {
            roles: vec![Role {
                name: "reader".into(),
                allow: vec![grant("*", &[Method::GET], &[])],
                deny: vec![grant("github", &[], &["/admin/**"])],
            }],
            shadow: false,
        };
        let a = Access { rbac: &rbac };
        let permits = |p: &Principal, api: &str, m: Method, segments: &[&str]| {
            a.decide(
                p,
                api,
                &m,
                &RequestPath::new(segments.to_vec()),
                Case::Sensitive,
                false,
            )
            .is_ok()
        };
        let mut p = Principal {
            id: "u".into(),
            kind: PrincipalKind::Jwt,
            roles: vec!["reader".into()],
            allowed_apis: None,
            key_rate_limit: None,
        };
        assert!(permits(&p, "github", Method::GET, &["user"]));
        assert!(!permits(&p, "github", Method::POST, &["user"]));
        assert!(!permits(&p, "github", Method::GET, &["admin", "x"]));
        p.allowed_apis = Some(vec!["weather".into()]);
        assert!(!permits(&p, "github", Method::GET, &["user"]));
        assert!(permits(&p, "weather", Method::GET, &["now"]));
        p.roles.clear();
        assert!(
            permits(&p, "weather", Method::DELETE, &["now"]),
            "a key's list is its grant"
        );
        p.allowed_apis = None;
        assert!(
            !permits(&p, "weather", Method::GET, &["now"]),
            "no roles, no grant"
        );
    }
}
