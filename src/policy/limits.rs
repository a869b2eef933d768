//! The rate-limit stage: which policies apply to a call (the API's or `rate_limits.default`,
//! endpoint policies, the API key's own, `per_user`), checked together in one decision.

use super::paths::RequestPath;
use crate::auth::{Caller, Principal, PrincipalKind};
use crate::config::{Api, RateLimits};
use crate::error::{ErrorKind, GatewayError, RateLimitDenial};
use crate::ratelimit::{Limiter, Policy, PolicyState, RateLimitDecision};

/// The policies that apply to a call, each with the key its count is kept under.
pub fn applicable<'a>(
    limits: &'a RateLimits,
    api: &'a Api,
    path: &RequestPath<'_>,
    caller: &'a Caller,
) -> Vec<(String, &'a Policy)> {
    counters(
        limits,
        api,
        |pattern| path.limited_by(pattern, api.path_case()),
        &caller.principal,
        caller.client_ip,
    )
}

/// The policies `principal`'s calls to `api` are counted under, each with its key: the
/// API's own (or the default) and the endpoint policies `endpoint` says apply, all shared by
/// every caller; the key's own and `per_user`, both shared across APIs.
pub fn counters<'a>(
    limits: &'a RateLimits,
    api: &'a Api,
    endpoint: impl Fn(&crate::config::PathPattern) -> bool,
    principal: &'a Principal,
    client_ip: Option<std::net::IpAddr>,
) -> Vec<(String, &'a Policy)> {
    let mut checks = Vec::with_capacity(2);
    if let Some(p) = api.rate_limit.as_ref().or(limits.default.as_ref()) {
        checks.push((format!("api:{}", api.name), p));
    }
    for (i, (pattern, p)) in api.endpoint_rate_limits.iter().enumerate() {
        if endpoint(pattern) {
            checks.push((format!("ep:{}:{i}", api.name), p));
        }
    }
    if let Some(p) = &principal.key_rate_limit {
        checks.push((principal.id.clone(), p));
    }
    if let Some(p) = &limits.per_user {
        // Anonymous callers are told apart by address.
        let who = if principal.kind == PrincipalKind::Anonymous {
            let ip = client_ip.map_or_else(|| "local".to_string(), |ip| ip.to_string());
            format!("anonymous@{ip}")
        } else {
            principal.id.clone()
        };
        checks.push((format!("user:{who}"), p));
    }
    checks
}

/// Counts the call against every applicable policy: 429 when an enforced one refuses, 503
/// when the shared store is down and `on_error = "deny"`. Policies in `mode = "shadow"` (all
/// of them with `everything`) are counted apart; their would-be refusal is returned beside
/// the states instead of answering 429.
pub async fn check(
    limits: &RateLimits,
    limiter: &Limiter,
    api: &Api,
    path: &RequestPath<'_>,
    caller: &Caller,
    everything: bool,
) -> Result<(Vec<PolicyState>, Option<GatewayError>), GatewayError> {
    let (shadow, enforced): (Vec<_>, Vec<_>) = applicable(limits, api, path, caller)
        .into_iter()
        .partition(|(_, p)| everything || p.shadow);
    let mut states = decide(limiter, &enforced).await?;
    let shadowed = match decide(limiter, &shadow).await {
        Ok(more) => {
            states.extend(more);
            None
        }
        Err(e) => Some(e),
    };
    Ok((states, shadowed))
}

async fn decide(
    limiter: &Limiter,
    checks: &[(String, &Policy)],
) -> Result<Vec<PolicyState>, GatewayError> {
    if checks.is_empty() {
        return Ok(Vec::new());
    }
    match limiter.check(checks).await {
        Err(_) => Err(GatewayError::new(
            ErrorKind::LimiterUnavailable,
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
