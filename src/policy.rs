//! The policy pipeline shared by both doors: a [`CallRequest`] goes in, a [`Decision`] comes
//! out. The MCP door and the proxy door build the same request value and call
//! [`Pipeline::evaluate`]; no policy logic is written anywhere else.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::auth::signature::{SignatureVerifier, Verified};
use crate::auth::{unauthorized, Authenticator, Principal, PrincipalKind};
use crate::config::{Api, Config, RequestGuards};
use crate::egress::{Egress, EndpointPath};
use crate::error::{GatewayError, RateLimitDenial};
use crate::ratelimit::{Limiter, PolicyState, RateLimitDecision, RedisLimiter};

pub mod access;
pub use access::Access;

/// Who is calling, as established once per HTTP request (or once per stdio session).
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The client's address (behind trusted proxies, the forwarded one).
    pub client_ip: Option<IpAddr>,
    /// A verified request signature, if the request carried one.
    pub signature: Option<Verified>,
    /// The caller's W3C trace context, or a new trace.
    pub trace: crate::trace::TraceContext,
}

/// The HTTP request a caller is identified from.
pub struct CallerRequest<'a> {
    /// The TCP peer's address.
    pub peer: Option<IpAddr>,
    pub method: &'a Method,
    /// The request path and query as received (for signatures).
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    /// The raw HTTP/1 request head, for framing checks the parsed headers cannot show.
    pub raw_head: Option<&'a [u8]>,
    /// The whole body, when the door has already read it (the MCP door); its digest is then
    /// checked against a signature at once. `None`: the door checks it while streaming.
    pub body: Option<&'a [u8]>,
}

/// Which front door a call came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Mcp,
    Proxy,
}

/// One call, as both doors describe it to the pipeline.
#[derive(Debug)]
pub struct CallRequest<'a> {
    pub door: Door,
    /// The API name (or, on the MCP door, its base URL).
    pub api: &'a str,
    pub method: &'a Method,
    /// The endpoint as the caller wrote it, path and optional query.
    pub endpoint: &'a str,
    /// Declared body length, when known before reading the body.
    pub content_length: Option<u64>,
    /// Whether the request carries a body at all (declared length > 0 or chunked).
    pub has_body: bool,
    pub content_type: Option<&'a str>,
    pub caller: &'a Caller,
}

/// An allowed call: the API it goes to and its validated endpoint.
#[derive(Debug)]
pub struct Allowed {
    pub api: Arc<Api>,
    pub endpoint: EndpointPath,
    /// Every rate-limit policy that applied, after this call was counted.
    pub rate_limits: Vec<PolicyState>,
}

/// The pipeline's verdict. A denial carries the error the caller will see.
pub type Decision = Result<Allowed, GatewayError>;

/// The ordered policy checks. Built once from config, shared by every request.
pub struct Pipeline {
    config: Arc<Config>,
    /// Shared with the pipelines of later configs: limits survive a reload.
    limiter: Arc<Limiter>,
    auth: Authenticator,
    /// Shared likewise: a nonce seen before a reload stays seen.
    signatures: Arc<SignatureVerifier>,
}

impl Pipeline {
    /// Fails only when the Redis client cannot be created (an invalid URL); Redis itself is
    /// contacted lazily, so the gateway starts while Redis is down.
    pub fn new(config: Arc<Config>, egress: Arc<Egress>) -> Result<Self, String> {
        let limiter = match &config.rate_limits.redis {
            Some(settings) => Limiter::Redis(Box::new(RedisLimiter::new(settings.clone())?)),
            None => Limiter::memory(),
        };
        Ok(Pipeline {
            auth: Authenticator::new(config.clone(), egress)?,
            signatures: Arc::new(SignatureVerifier::new()),
            config,
            limiter: Arc::new(limiter),
        })
    }

    /// The pipeline of a reloaded config: new policies and credentials, the same limiter
    /// state and nonce memory.
    pub fn reconfigured(&self, config: Arc<Config>, egress: Arc<Egress>) -> Result<Self, String> {
        Ok(Pipeline {
            auth: Authenticator::new(config.clone(), egress)?,
            signatures: self.signatures.clone(),
            limiter: self.limiter.clone(),
            config,
        })
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// Role-based access, for the doors' listings (`tools/list`, `list_apis`).
    pub fn access(&self) -> Access<'_> {
        Access {
            rbac: &self.config.rbac,
        }
    }

    /// Establishes who is calling, in this order:
    /// 1. the client address (forwarded headers count only from `security.trusted_proxies`),
    ///    then `security.ip_deny` and `security.ip_allow` (403 `ip_denied`);
    /// 2. header count and size limits (431) and smuggling shapes (400 `ambiguous_framing`);
    /// 3. authentication (401 with a reason; anonymous only when `auth.required = false`);
    /// 4. the request signature, when present or required (401 `signature_*`).
    pub async fn identify(&self, req: &CallerRequest<'_>) -> Result<Caller, GatewayError> {
        let cfg = &self.config;
        let client_ip = access::client_ip(&cfg.ip_rules, req.peer, Some(req.headers));
        access::check_ip(&cfg.ip_rules, client_ip)?;
        access::check_headers(&cfg.header_limits, req.headers)?;
        access::check_raw_framing(req.raw_head)?;
        let principal = self.auth.authenticate(req.headers).await?;
        let signature = self
            .signatures
            .verify(
                &cfg.signatures,
                &self.limiter,
                req.method.as_str(),
                req.path,
                req.query,
                req.headers,
            )
            .await?;
        match (&signature, req.body) {
            (None, _) if cfg.signatures.required => {
                return Err(unauthorized(
                    "signature_missing",
                    "this gateway requires signed requests (X-Signature headers)",
                ))
            }
            (Some(v), Some(body)) => check_body_digest(v, body)?,
            _ => {}
        }
        Ok(Caller {
            principal,
            client_ip,
            signature,
            trace: crate::trace::TraceContext::from_headers(req.headers),
        })
    }

    /// The caller of a stdio session: a local process the operator started, identified by
    /// the `API_GATEWAY_MCP_TOKEN` or `API_GATEWAY_MCP_API_KEY` environment variable (or
    /// anonymous when `auth.required = false`). IP rules do not apply to a local pipe.
    pub async fn identify_local(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Caller, GatewayError> {
        let mut headers = HeaderMap::new();
        let bad = |_| unauthorized("malformed_credentials", "the credential is not valid text");
        if let Some(t) = env("API_GATEWAY_MCP_TOKEN").filter(|t| !t.is_empty()) {
            headers.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {t}").parse().map_err(bad)?,
            );
        }
        if let Some(k) = env("API_GATEWAY_MCP_API_KEY").filter(|k| !k.is_empty()) {
            headers.insert("x-api-key", k.parse().map_err(bad)?);
        }
        Ok(Caller {
            principal: self.auth.authenticate(&headers).await?,
            client_ip: None,
            signature: None,
            trace: crate::trace::TraceContext::new_root(),
        })
    }

    /// Judges one call of an identified caller. The checks run in this order, and the first
    /// failure wins:
    /// 1. the API exists and is visible to the caller (404 `unknown_api`; with RBAC, 403
    ///    `not_permitted`, the same for a hidden API as for a missing one);
    /// 2. the endpoint is a safe path under the API's base (400 `invalid_endpoint`);
    /// 3. the method is allowed for the API (403);
    /// 4. the path is not denied and is allowed (403; deny patterns win);
    /// 5. RBAC: the caller's roles (and its API key's `allowed_apis`) permit the call; deny
    ///    rules win (403 `not_permitted`);
    /// 6. a signature, when the API requires one (401 `signature_missing`);
    /// 7. the declared body size (413) and content type (415) pass the request guards;
    /// 8. rate limits (429): the API's policy (or `rate_limits.default`), endpoint policies,
    ///    the API key's own policy and `per_user`, all checked together and last, so a call
    ///    refused for any other reason costs no quota.
    pub async fn evaluate(&self, req: &CallRequest<'_>) -> Decision {
        let principal = &req.caller.principal;
        let access = self.access();
        let hides = self.config.rbac.enabled() || principal.allowed_apis.is_some();
        let api = match self.config.api(req.api) {
            // With RBAC (or a key's allowed_apis), an API the caller cannot use and an API
            // that does not exist look the same: nothing about what exists is revealed.
            Some(api) if hides && access.visible_methods(principal, api).is_empty() => None,
            found => found,
        };
        let api = api.ok_or_else(|| {
            let name = truncate(req.api, 64);
            if hides {
                GatewayError::forbidden(format!(
                    "API {name:?} is not available to you; call list_apis for what you may use"
                ))
                .with_reason("not_permitted")
            } else {
                GatewayError::unknown_api(format!(
                    "no API named {name:?} is configured; call list_apis for the catalogue"
                ))
            }
        })?;

        let endpoint = self.check_target(principal, api, req.method, req.endpoint)?;
        let segments = endpoint.decoded_segments();

        if api.require_signature && req.caller.signature.is_none() {
            return Err(unauthorized(
                "signature_missing",
                format!(
                    "calls to API {:?} must be signed (X-Signature headers)",
                    api.name
                ),
            ));
        }

        check_body(&self.config.request, req)?;

        let rate_limits = self.check_rate_limits(api, &segments, req).await?;
        Ok(Allowed {
            api: api.clone(),
            endpoint,
            rate_limits,
        })
    }

    /// Steps 2–5 of [`Pipeline::evaluate`] for one destination: the endpoint is safe, and the
    /// API's method and path rules and the caller's roles allow it. Also used to re-check
    /// each redirect hop.
    pub fn check_target(
        &self,
        principal: &Principal,
        api: &Api,
        method: &Method,
        endpoint: &str,
    ) -> Result<EndpointPath, GatewayError> {
        let endpoint = EndpointPath::parse(endpoint)?;
        if !api.methods.contains(method) {
            return Err(GatewayError::forbidden(format!(
                "method {} is not allowed for API {:?}; allowed: {}",
                method,
                api.name,
                api.methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let segments = endpoint.decoded_segments();
        if api.deny_paths.iter().any(|p| p.matches(&segments))
            || !api.paths.iter().any(|p| p.matches(&segments))
        {
            return Err(GatewayError::forbidden(format!(
                "path {} is not allowed for API {:?}",
                endpoint.path(),
                api.name
            )));
        }
        if !self
            .access()
            .permits(principal, &api.name, method, &segments)
        {
            return Err(GatewayError::forbidden(format!(
                "{} {} on API {:?} is not permitted for your roles",
                method,
                endpoint.path(),
                api.name
            ))
            .with_reason("not_permitted"));
        }
        Ok(endpoint)
    }

    async fn check_rate_limits(
        &self,
        api: &Api,
        segments: &[&str],
        req: &CallRequest<'_>,
    ) -> Result<Vec<PolicyState>, GatewayError> {
        let limits = &self.config.rate_limits;
        let mut checks = Vec::with_capacity(2);
        if let Some(p) = api.rate_limit.as_ref().or(limits.default.as_ref()) {
            checks.push((format!("api:{}", api.name), p));
        }
        for (i, (pattern, p)) in api.endpoint_rate_limits.iter().enumerate() {
            if pattern.matches(segments) {
                checks.push((format!("ep:{}:{i}", api.name), p));
            }
        }
        let principal = &req.caller.principal;
        if let Some(p) = &principal.key_rate_limit {
            checks.push((principal.id.clone(), p));
        }
        if let Some(p) = &limits.per_user {
            // Anonymous callers are told apart by address.
            let who = if principal.kind == PrincipalKind::Anonymous {
                let ip = req
                    .caller
                    .client_ip
                    .map_or_else(|| "local".to_string(), |ip| ip.to_string());
                format!("anonymous@{ip}")
            } else {
                principal.id.clone()
            };
            checks.push((format!("user:{who}"), p));
        }
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        match self.limiter.check(&checks).await {
            Err(_) => Err(GatewayError::new(
                crate::error::ErrorKind::LimiterUnavailable,
                "the shared rate-limit store is unavailable and calls are refused until it recovers",
            )),
            Ok(RateLimitDecision::Allowed { states }) => Ok(states),
            Ok(RateLimitDecision::Denied {
                policy,
                retry_after,
                states,
            }) => Err(GatewayError::rate_limited(RateLimitDenial {
                policy,
                retry_after,
                states,
            })),
        }
    }
}

/// Checks a fully read body against the digest its signature covers.
pub fn check_body_digest(v: &Verified, body: &[u8]) -> Result<(), GatewayError> {
    use sha2::Digest;
    let actual: [u8; 32] = sha2::Sha256::digest(body).into();
    if actual != v.content_sha256 {
        return Err(unauthorized(
            "signature_invalid",
            "the body does not match X-Content-SHA256",
        ));
    }
    Ok(())
}

fn check_body(guards: &RequestGuards, req: &CallRequest<'_>) -> Result<(), GatewayError> {
    if let Some(len) = req.content_length {
        if len > guards.max_body_size {
            return Err(GatewayError::payload_too_large(format!(
                "request body of {len} bytes exceeds the limit of {} bytes",
                guards.max_body_size
            )));
        }
    }
    if req.has_body && !guards.allowed_content_types.is_empty() {
        let essence = req
            .content_type
            .map(|ct| {
                ct.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        if !guards.allowed_content_types.contains(&essence) {
            return Err(GatewayError::unsupported_media_type(format!(
                "content type {:?} is not allowed; allowed: {}",
                truncate(&essence, 64),
                guards.allowed_content_types.join(", ")
            )));
        }
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// An allowed-path pattern. Segments are literals, `*` (exactly one segment) or `**` (any
/// number of segments, including none). Matching is on percent-decoded segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    raw: String,
    segments: Vec<PatternSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternSegment {
    Literal(String),
    One,
    Any,
}

impl PathPattern {
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        if !s.starts_with('/') {
            return Err(format!("{s:?} must start with '/'"));
        }
        let mut segments = Vec::new();
        for seg in s[1..].split('/') {
            let p = match seg {
                "" => continue,
                "*" => PatternSegment::One,
                "**" => PatternSegment::Any,
                lit if lit.contains('*') => {
                    return Err(format!(
                        "{s:?}: '*' must be a whole segment (\"*\" or \"**\")"
                    ))
                }
                "." | ".." => return Err(format!("{s:?}: dot segments are not allowed")),
                lit => PatternSegment::Literal(lit.to_string()),
            };
            segments.push(p);
        }
        Ok(PathPattern {
            raw: s.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the decoded path segments match. Empty segments (a trailing slash) are ignored.
    pub fn matches(&self, path: &[&str]) -> bool {
        let path: Vec<&str> = path.iter().copied().filter(|s| !s.is_empty()).collect();
        match_segments(&self.segments, &path)
    }
}

fn match_segments(pattern: &[PatternSegment], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((PatternSegment::Any, rest)) => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..]))
        }
        Some((PatternSegment::One, rest)) => !path.is_empty() && match_segments(rest, &path[1..]),
        Some((PatternSegment::Literal(lit), rest)) => {
            path.first().is_some_and(|p| p == lit) && match_segments(rest, &path[1..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, path: &str) -> bool {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        PathPattern::parse(p).unwrap().matches(&segs)
    }

    #[test]
    fn path_patterns() {
        assert!(m("/**", "/"));
        assert!(m("/**", "/a/b/c"));
        assert!(m("/user", "/user"));
        assert!(m("/user", "/user/"));
        assert!(!m("/user", "/users"));
        assert!(!m("/user", "/user/x"));
        assert!(m("/repos/**", "/repos"));
        assert!(m("/repos/**", "/repos/a/b"));
        assert!(!m("/repos/**", "/reposx/a"));
        assert!(m("/repos/*/issues", "/repos/x/issues"));
        assert!(!m("/repos/*/issues", "/repos/issues"));
        assert!(m("/a/**/z", "/a/z"));
        assert!(m("/a/**/z", "/a/b/c/z"));
        assert!(!m("/a/**/z", "/a/b/c"));
        assert!(PathPattern::parse("v1").is_err());
        assert!(PathPattern::parse("/v1*").is_err());
        assert!(PathPattern::parse("/../x").is_err());
    }
}
