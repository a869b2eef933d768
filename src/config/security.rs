//! `[security.request]` body guards and header limits, and `[egress]`'s resolvers.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{err, positive, ConfigError, HeaderLimits};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgress {
    nameservers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecurity {
    #[serde(default)]
    pub(super) request: RawRequestGuards,
    pub(super) ip_allow: Option<Vec<String>>,
    pub(super) ip_deny: Option<Vec<String>>,
    pub(super) trusted_proxies: Option<Vec<String>>,
    pub(super) signatures: Option<super::access::RawSignatures>,
    pub(super) explain_denials: Option<crate::types::ExplainDenials>,
    #[serde(default)]
    pub(super) ip_mode: crate::types::RuleMode,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequestGuards {
    max_body_size: Option<u64>,
    allowed_content_types: Option<Vec<String>>,
    max_headers: Option<usize>,
    max_header_bytes: Option<usize>,
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

/// Validates `[security.request]`: body guards and header limits.
pub(super) fn validate_request(
    raw: RawRequestGuards,
    errors: &mut Vec<ConfigError>,
) -> (RequestGuards, HeaderLimits) {
    let guards = raw;
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
            errors,
            "security.request.max_headers",
            guards.max_headers,
            100,
        ),
        max_header_bytes: positive(
            errors,
            "security.request.max_header_bytes",
            guards.max_header_bytes,
            32 << 10,
        ),
    };
    (request, header_limits)
}

/// Validates `egress.nameservers`: `IP` (port 53) or `IP:port`.
pub(super) fn validate_nameservers(
    raw: RawEgress,
    errors: &mut Vec<ConfigError>,
) -> Vec<SocketAddr> {
    let mut nameservers = Vec::new();
    for (i, ns) in raw.nameservers.unwrap_or_default().iter().enumerate() {
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
    nameservers
}
