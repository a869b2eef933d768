//! The policy pipeline shared by both doors: a [`CallRequest`] goes in, a [`Decision`] comes
//! out. The MCP door and the proxy door build the same request value and call
//! [`Pipeline::evaluate`]; no policy logic is written anywhere else.

use std::net::IpAddr;
use std::sync::Arc;

use http::Method;

use crate::config::{Api, Config, RequestGuards};
use crate::egress::EndpointPath;
use crate::error::{GatewayError, RateLimitDenial};
use crate::ratelimit::{Limiter, PolicyState, RateLimitDecision, RedisLimiter};

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
    pub client_ip: Option<IpAddr>,
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
    limiter: Limiter,
}

impl Pipeline {
    /// Fails only when the Redis client cannot be created (an invalid URL); Redis itself is
    /// contacted lazily, so the gateway starts while Redis is down.
    pub fn new(config: Arc<Config>) -> Result<Self, String> {
        let limiter = match &config.rate_limits.redis {
            Some(settings) => Limiter::Redis(Box::new(RedisLimiter::new(settings.clone())?)),
            None => Limiter::memory(),
        };
        Ok(Pipeline { config, limiter })
    }

    /// Judges one call. The checks run in this order, and the first failure wins:
    /// 1. the API exists (404 `unknown_api`);
    /// 2. the endpoint is a safe path under the API's base (400 `invalid_endpoint`);
    /// 3. the method is allowed for the API (403);
    /// 4. the path is not denied and is allowed (403; deny patterns win);
    /// 5. the declared body size (413) and content type (415) pass the request guards;
    /// 6. rate limits (429): the API's policy (or `rate_limits.default`) and `per_user`, all
    ///    checked together and last, so a call refused for any other reason costs no quota.
    ///
    /// Authentication, RBAC and IP rules will slot in between 1 and 3.
    pub async fn evaluate(&self, req: &CallRequest<'_>) -> Decision {
        let api = self.config.api(req.api).ok_or_else(|| {
            GatewayError::unknown_api(format!(
                "no API named {:?} is configured; call list_apis for the catalogue",
                truncate(req.api, 64)
            ))
        })?;

        let endpoint = EndpointPath::parse(req.endpoint)?;

        if !api.methods.contains(req.method) {
            return Err(GatewayError::forbidden(format!(
                "method {} is not allowed for API {:?}; allowed: {}",
                req.method,
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

        check_body(&self.config.request, req)?;

        let rate_limits = self.check_rate_limits(api, &segments, req).await?;
        Ok(Allowed {
            api: api.clone(),
            endpoint,
            rate_limits,
        })
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
        if let Some(p) = &limits.per_user {
            // Until authentication exists every caller is anonymous, told apart by address.
            let who = req
                .client_ip
                .map_or_else(|| "local".to_string(), |ip| ip.to_string());
            checks.push((format!("user:anonymous@{who}"), p));
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
