//! The one error type of a gateway call. Each [`ErrorKind`] maps to exactly one HTTP status
//! (proxy door) and one machine-readable `error` code (MCP door); both mappings live here.

use serde_json::{json, Value};

use crate::ratelimit::{ceil_secs, PolicyState};

/// What went wrong, and therefore which status and code the caller sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No API of that name is configured. 404 `unknown_api`.
    UnknownApi,
    /// The API, method or path is not allowed, or the caller's roles or address do not permit
    /// it. 403 `forbidden`.
    Forbidden,
    /// No valid credentials: missing, expired, forged or revoked. 401 `unauthorized`, with
    /// `WWW-Authenticate`.
    Unauthorized,
    /// The identity provider (token introspection) cannot be reached. 503 `auth_unavailable`.
    AuthUnavailable,
    /// The audit log cannot be written and `audit.on_failure = "block"`. 503
    /// `audit_unavailable`.
    AuditUnavailable,
    /// Too many request headers, or too many header bytes. 431 `headers_too_large`.
    HeadersTooLarge,
    /// The endpoint could escape the API's base path or is malformed. 400 `invalid_endpoint`.
    InvalidEndpoint,
    /// A caller-supplied header cannot be forwarded. 400 `invalid_header`.
    InvalidHeader,
    /// Tool arguments that are well-formed JSON but unusable. 400 `invalid_arguments`.
    InvalidArguments,
    /// Request body larger than `security.request.max_body_size`. 413 `payload_too_large`.
    PayloadTooLarge,
    /// Request content type not in `allowed_content_types`. 415 `unsupported_media_type`.
    UnsupportedMediaType,
    /// A rate-limit policy refused the call. 429 `rate_limited`, with `Retry-After`.
    RateLimited,
    /// The shared rate-limit store is down and `on_error = "deny"`. 503 `rate_limiter_unavailable`.
    LimiterUnavailable,
    /// The destination resolved to an address the SSRF guard refuses. 403 `egress_denied`.
    EgressDenied,
    /// The upstream did not answer within the API's deadline. 504 `upstream_timeout`.
    UpstreamTimeout,
    /// The upstream could not be reached or broke the exchange. 502 `upstream_error`.
    UpstreamError,
    /// A bug or resource failure inside the gateway. 500 `internal_error`.
    Internal,
}

impl ErrorKind {
    /// HTTP status on the proxy door.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::UnknownApi => 404,
            ErrorKind::Unauthorized => 401,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::AuthUnavailable => 503,
            ErrorKind::AuditUnavailable => 503,
            ErrorKind::Forbidden | ErrorKind::EgressDenied => 403,
            ErrorKind::InvalidEndpoint | ErrorKind::InvalidHeader | ErrorKind::InvalidArguments => {
                400
            }
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::RateLimited => 429,
            ErrorKind::LimiterUnavailable => 503,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::UpstreamError => 502,
            ErrorKind::Internal => 500,
        }
    }

    /// Machine-readable reason, the same on both doors.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::UnknownApi => "unknown_api",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::AuthUnavailable => "auth_unavailable",
            ErrorKind::AuditUnavailable => "audit_unavailable",
            ErrorKind::InvalidEndpoint => "invalid_endpoint",
            ErrorKind::InvalidHeader => "invalid_header",
            ErrorKind::InvalidArguments => "invalid_arguments",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::LimiterUnavailable => "rate_limiter_unavailable",
            ErrorKind::EgressDenied => "egress_denied",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamError => "upstream_error",
            ErrorKind::Internal => "internal_error",
        }
    }

    fn title(self) -> &'static str {
        match self {
            ErrorKind::UnknownApi => "Unknown API",
            ErrorKind::Forbidden => "Forbidden",
            ErrorKind::Unauthorized => "Unauthorized",
            ErrorKind::HeadersTooLarge => "Request header fields too large",
            ErrorKind::AuthUnavailable => "Authentication unavailable",
            ErrorKind::AuditUnavailable => "Audit log unavailable",
            ErrorKind::InvalidEndpoint => "Invalid endpoint",
            ErrorKind::InvalidHeader => "Invalid header",
            ErrorKind::InvalidArguments => "Invalid arguments",
            ErrorKind::PayloadTooLarge => "Payload too large",
            ErrorKind::UnsupportedMediaType => "Unsupported media type",
            ErrorKind::RateLimited => "Too many requests",
            ErrorKind::LimiterUnavailable => "Rate limiter unavailable",
            ErrorKind::EgressDenied => "Destination not allowed",
            ErrorKind::UpstreamTimeout => "Upstream timeout",
            ErrorKind::UpstreamError => "Upstream error",
            ErrorKind::Internal => "Internal error",
        }
    }
}

/// A failed or refused call. The message is meant for the caller (a person or a model) and
/// never contains credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", kind.code())]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub message: String,
    /// Set on `RateLimited`: which policy refused, and when to retry.
    pub rate_limit: Option<Box<RateLimitDenial>>,
    /// A finer machine-readable reason within the kind, e.g. `token_expired` for
    /// `unauthorized` or `ip_denied` for `forbidden`.
    pub reason: Option<&'static str>,
}

/// The details of a rate-limit denial, shown the same way on both doors.
#[derive(Debug, Clone)]
pub struct RateLimitDenial {
    pub policy: String,
    pub retry_after: std::time::Duration,
    pub states: Vec<PolicyState>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        GatewayError {
            kind,
            message: message.into(),
            rate_limit: None,
            reason: None,
        }
    }

    /// Sets the finer `reason`.
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// A `rate_limited` error; the message says when to retry.
    pub fn rate_limited(denial: RateLimitDenial) -> Self {
        GatewayError {
            kind: ErrorKind::RateLimited,
            message: format!(
                "rate limit {:?} exceeded; retry in {} s",
                denial.policy,
                ceil_secs(denial.retry_after)
            ),
            rate_limit: Some(Box::new(denial)),
            reason: None,
        }
    }

    /// Adds `reason`, and `retry_after_s` and `policy` for a rate-limit denial.
    fn with_rate_limit(&self, mut v: Value) -> Value {
        if let Some(r) = self.reason {
            v["reason"] = json!(r);
        }
        if let Some(d) = &self.rate_limit {
            v["retry_after_s"] = json!(ceil_secs(d.retry_after));
            v["policy"] = json!(d.policy);
        }
        v
    }

    /// RFC 9457 `application/problem+json` body for the proxy door.
    pub fn problem_json(&self) -> Value {
        self.with_rate_limit(json!({
            "type": format!("urn:api-gateway-mcp:error:{}", self.kind.code()),
            "title": self.kind.title(),
            "status": self.kind.status(),
            "detail": self.message,
            "error": self.kind.code(),
        }))
    }

    /// `structuredContent` of an MCP `isError` tool result.
    pub fn tool_error_json(&self) -> Value {
        self.with_rate_limit(json!({
            "error": self.kind.code(),
            "message": self.message,
            "status": self.kind.status(),
        }))
    }
}

/// Shorthand constructors, one per kind.
macro_rules! ctor {
    ($($fn_name:ident => $kind:ident),* $(,)?) => {
        impl GatewayError {
            $(pub fn $fn_name(message: impl Into<String>) -> Self {
                GatewayError::new(ErrorKind::$kind, message)
            })*
        }
    };
}

ctor! {
    unknown_api => UnknownApi,
    forbidden => Forbidden,
    unauthorized => Unauthorized,
    headers_too_large => HeadersTooLarge,
    invalid_endpoint => InvalidEndpoint,
    invalid_header => InvalidHeader,
    invalid_arguments => InvalidArguments,
    payload_too_large => PayloadTooLarge,
    unsupported_media_type => UnsupportedMediaType,
    egress_denied => EgressDenied,
    upstream_timeout => UpstreamTimeout,
    upstream_error => UpstreamError,
    internal => Internal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_distinct_code_and_sane_status() {
        use ErrorKind::*;
        let kinds = [
            UnknownApi,
            Forbidden,
            Unauthorized,
            HeadersTooLarge,
            AuthUnavailable,
            AuditUnavailable,
            InvalidEndpoint,
            InvalidHeader,
            InvalidArguments,
            PayloadTooLarge,
            UnsupportedMediaType,
            RateLimited,
            LimiterUnavailable,
            EgressDenied,
            UpstreamTimeout,
            UpstreamError,
            Internal,
        ];
        let codes: std::collections::HashSet<_> = kinds.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), kinds.len());
        for k in kinds {
            assert!((400..600).contains(&k.status()));
        }
        let p = GatewayError::upstream_timeout("slow").problem_json();
        assert_eq!(p["status"], 504);
        assert_eq!(p["error"], "upstream_timeout");
    }
}
