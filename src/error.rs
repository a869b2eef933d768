//! The one error type of a gateway call. Each [`ErrorKind`] maps to exactly one HTTP status
//! (proxy door) and one machine-readable `error` code (MCP door); each [`Reason`] refines one
//! kind, so it has that status and shape too, and its code is the metrics' `reason` label.
//! Every mapping lives here.

use serde_json::{json, Value};

use crate::types::{ceil_secs, PolicyState};

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
    /// The request head did not arrive in time. 408 `request_timeout`.
    RequestTimeout,
    /// The method is not one this door serves at all (CONNECT). 405 `method_not_supported`.
    MethodNotSupported,
    /// The listener holds as many connections as it may. 503 `overloaded`.
    Overloaded,
    /// The call waits for a person's approval. 202 `approval_required` (proxy door, with
    /// `Location: /approvals/{id}`); an `isError` result on the MCP door.
    ApprovalRequired,
    /// The call does not match the approval it names, or the approval was used. 409
    /// `conflict`.
    Conflict,
    /// The approval it names expired. 410 `gone`.
    Gone,
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
            ErrorKind::RequestTimeout => 408,
            ErrorKind::MethodNotSupported => 405,
            ErrorKind::Overloaded => 503,
            ErrorKind::ApprovalRequired => 202,
            ErrorKind::Conflict => 409,
            ErrorKind::Gone => 410,
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
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::MethodNotSupported => "method_not_supported",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::ApprovalRequired => "approval_required",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Gone => "gone",
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
            ErrorKind::RequestTimeout => "Request timeout",
            ErrorKind::MethodNotSupported => "Method not supported",
            ErrorKind::Overloaded => "Too many connections",
            ErrorKind::ApprovalRequired => "Approval required",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::Gone => "Gone",
        }
    }
}

/// A finer machine-readable reason within a kind: `token_expired` within `unauthorized`,
/// `ip_denied` within `forbidden`. Each reason belongs to one kind, so it has one HTTP status
/// and one MCP shape; its code is also the `reason` label of the refusal metric.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => ($code:literal, $kind:ident),)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in table order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The machine-readable code, the same on both doors and in metrics and audit.
            pub fn code(self) -> &'static str {
                match self {
                    $(Reason::$variant => $code,)*
                }
            }

            /// The kind the reason refines, which gives its status and MCP shape.
            pub fn kind(self) -> ErrorKind {
                match self {
                    $(Reason::$variant => ErrorKind::$kind,)*
                }
            }
        }
    };
}

reasons! {
    /// No credential was presented and `auth.required = true`.
    MissingCredentials => ("missing_credentials", Unauthorized),
    /// The credential is not valid text or not well formed.
    MalformedCredentials => ("malformed_credentials", Unauthorized),
    /// More than one credential was presented.
    AmbiguousCredentials => ("ambiguous_credentials", Unauthorized),
    /// The `Authorization` scheme is not Bearer.
    UnsupportedScheme => ("unsupported_scheme", Unauthorized),
    /// The credential's method is not enabled in `auth.methods`.
    MethodNotEnabled => ("method_not_enabled", Unauthorized),
    /// The token does not parse as a JWT.
    MalformedToken => ("malformed_token", Unauthorized),
    /// The token's algorithm is not allowed for its issuer.
    AlgorithmNotAllowed => ("algorithm_not_allowed", Unauthorized),
    /// The token's key id is not in the issuer's key set.
    UnknownKey => ("unknown_key", Unauthorized),
    /// The token's signature does not verify.
    InvalidSignature => ("invalid_signature", Unauthorized),
    /// The token's issuer is not configured.
    InvalidIssuer => ("invalid_issuer", Unauthorized),
    /// The token is not for this gateway's audience.
    InvalidAudience => ("invalid_audience", Unauthorized),
    /// A required claim is missing.
    MissingClaim => ("missing_claim", Unauthorized),
    /// The token has expired.
    TokenExpired => ("token_expired", Unauthorized),
    /// The token's `nbf` lies in the future.
    TokenNotYetValid => ("token_not_yet_valid", Unauthorized),
    /// The token lives longer than the issuer allows.
    TokenLifetimeTooLong => ("token_lifetime_too_long", Unauthorized),
    /// Introspection says the token is not active.
    InactiveToken => ("inactive_token", Unauthorized),
    /// The API key is not known.
    InvalidApiKey => ("invalid_api_key", Unauthorized),
    /// The API key was revoked.
    RevokedApiKey => ("revoked_api_key", Unauthorized),
    /// The request (or the API) requires a signature and none was sent.
    SignatureMissing => ("signature_missing", Unauthorized),
    /// The request signature or its body digest does not verify.
    SignatureInvalid => ("signature_invalid", Unauthorized),
    /// The signature's timestamp is outside the allowed skew.
    SignatureExpired => ("signature_expired", Unauthorized),
    /// The signature's nonce was used before.
    SignatureReplayed => ("signature_replayed", Unauthorized),
    /// The token introspection endpoint cannot be reached.
    IntrospectionUnavailable => ("introspection_unavailable", AuthUnavailable),
    /// The client address is denied by `security.ip_deny`/`ip_allow`.
    IpDenied => ("ip_denied", Forbidden),
    /// The caller's roles (or its key's `allowed_apis`) do not permit the call.
    NotPermitted => ("not_permitted", Forbidden),
    /// The method is not in the API's `methods`.
    MethodNotAllowed => ("method_not_allowed", Forbidden),
    /// The path is denied by `deny_paths` or not in `paths`.
    PathNotAllowed => ("path_not_allowed", Forbidden),
    /// An upstream redirect points where the caller may not go.
    RedirectDenied => ("redirect_denied", Forbidden),
    /// The request's `Host` is not one the door accepts (`allowed_hosts` of `[proxy]`/`[mcp]`).
    HostNotAllowed => ("host_not_allowed", Forbidden),
    /// The request carries a browser `Origin` the door does not accept
    /// (`allowed_origins` of `[proxy]`/`[mcp]`).
    OriginNotAllowed => ("origin_not_allowed", Forbidden),
    /// A console change (a POST made with the console's session cookie) without the
    /// session's CSRF token, or from another origin.
    CsrfRejected => ("csrf_rejected", Forbidden),
    /// The request body's framing is broken (a malformed chunk).
    MalformedBody => ("malformed_body", InvalidArguments),
    /// The caller (or the gateway) holds as many legacy MCP sessions as allowed.
    SessionLimit => ("session_limit", RateLimited),
    /// The MCP session belongs to another caller.
    SessionNotOwned => ("session_not_owned", Forbidden),
    /// The request's framing could be read two ways (smuggling shapes).
    AmbiguousFraming => ("ambiguous_framing", InvalidHeader),
    /// A header only the gateway may set (framing, forwarding, credentials).
    ReservedHeader => ("reserved_header", InvalidHeader),
    /// The header the API's upstream credential is injected in.
    CredentialHeader => ("credential_header", InvalidHeader),
    /// A method or URL override header (`X-HTTP-Method-Override`, `X-Original-URL`, …).
    OverrideHeader => ("override_header", InvalidHeader),
    /// The upstream of an API with a credential answered in a `Content-Encoding` the gateway
    /// cannot inspect to mask it.
    UnmaskableEncoding => ("unmaskable_encoding", UpstreamError),
    /// The upstream's compressed body does not decompress.
    MalformedUpstreamBody => ("malformed_upstream_body", UpstreamError),
    /// The upstream's body is larger than the API's `response.max_upstream_bytes`.
    UpstreamResponseTooLarge => ("upstream_response_too_large", UpstreamError),
    /// The request head is not valid HTTP/1.1 (on the doors that parse it themselves).
    MalformedRequest => ("malformed_request", InvalidHeader),
    /// The request head took longer than `server.request_head_timeout`.
    HeadTimeout => ("head_timeout", RequestTimeout),
    /// The listener holds `server.max_connections` connections already.
    ConnectionLimit => ("connection_limit", Overloaded),
    /// A `select` (or the API's `project`) that is not JMESPath or does not fit the answer.
    InvalidSelect => ("invalid_select", InvalidArguments),
    /// CONNECT: the proxy door forwards requests to APIs; it is not a tunnel.
    ConnectMethod => ("connect_method", MethodNotSupported),
    CredentialRequired => ("credential_required", Forbidden),
    CredentialUnavailable => ("credential_unavailable", UpstreamError),
    CredentialParam => ("credential_param", InvalidEndpoint),
    ApprovalPending => ("approval_pending", ApprovalRequired),
    ApprovalDenied => ("approval_denied", Forbidden),
    ApprovalDeclined => ("approval_declined", Forbidden),
    ConfirmationUnavailable => ("confirmation_unavailable", Forbidden),
    ApprovalConsumed => ("approval_consumed", Conflict),
    ApprovalMismatch => ("approval_mismatch", Conflict),
    ApprovalUnknown => ("approval_unknown", Conflict),
    ApprovalExpired => ("approval_expired", Gone),
}

/// The admission stage that refused a call (see [`crate::policy::Pipeline::admit`]), shown
/// as `stage` in every refusal so a caller (or a model) knows which rule to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Client address and IP rules.
    Address,
    /// The request itself: method, header limits, framing, Host and Origin.
    Request,
    Authentication,
    Signature,
    /// The API, endpoint, method and path.
    Target,
    /// RBAC and per-API signature requirements.
    Authorization,
    /// Body size, content type and digest.
    Body,
    /// Caller headers, by the outbound rule.
    Headers,
    /// The audit trail's health.
    Audit,
    RateLimit,
    /// DNS and the SSRF guard.
    Destination,
    /// The caller's own upstream credential (per principal, exchanged, connected).
    Credential,
    /// A person's approval, where an `[[approvals]]` rule asks for one.
    Approval,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Address => "address",
            Stage::Request => "request",
            Stage::Authentication => "authentication",
            Stage::Signature => "signature",
            Stage::Target => "target",
            Stage::Authorization => "authorization",
            Stage::Body => "body",
            Stage::Headers => "headers",
            Stage::Audit => "audit",
            Stage::RateLimit => "rate_limit",
            Stage::Destination => "destination",
            Stage::Credential => "credential",
            Stage::Approval => "approval",
        }
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
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
    pub reason: Option<Reason>,
    /// The admission stage that refused, when admission did.
    pub stage: Option<Stage>,
    /// The rule that refused, by its config key path (`apis[github].deny_paths[1]`,
    /// `rbac.roles[2].deny[0]`) or a `builtin.*` name for rules that are not configured.
    pub rule: Option<String>,
    /// More machine-readable fields for the caller (`pointer` and `expected` of an invalid
    /// argument), added to both the problem and the tool error.
    pub details: Option<Box<serde_json::Map<String, Value>>>,
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
            stage: None,
            rule: None,
            details: None,
        }
    }

    /// Names the rule that refused (the first name stays).
    pub fn by_rule(mut self, rule: impl Into<String>) -> Self {
        self.rule.get_or_insert_with(|| rule.into());
        self
    }

    /// What an untrusted caller is told (`security.explain_denials`): `full` keeps the stage,
    /// the rule and the pattern that matched; `rule` the stage and the rule; `none` neither
    /// (the audit record keeps them always).
    pub fn for_caller(&self, shown: crate::types::ExplainDenials) -> std::borrow::Cow<'_, Self> {
        use crate::types::ExplainDenials;
        let pattern = self
            .details
            .as_ref()
            .is_some_and(|d| d.contains_key("pattern"));
        match shown {
            ExplainDenials::Full => std::borrow::Cow::Borrowed(self),
            ExplainDenials::Rule if !pattern => std::borrow::Cow::Borrowed(self),
            _ => {
                let mut e = self.clone();
                if let Some(d) = e.details.as_mut() {
                    d.remove("pattern");
                }
                if shown == ExplainDenials::None {
                    e.stage = None;
                    e.rule = None;
                }
                std::borrow::Cow::Owned(e)
            }
        }
    }

    /// Adds a machine-readable field to the error's JSON.
    pub fn with_detail(mut self, key: &str, value: Value) -> Self {
        self.details
            .get_or_insert_with(Default::default)
            .insert(key.to_string(), value);
        self
    }

    /// One sentence a model (or a person) can act on: what to do next.
    pub fn advice(&self) -> String {
        let next = match (self.kind, self.reason) {
            (ErrorKind::UnknownApi, _) => "call list_apis to see the APIs you may call".to_string(),
            (_, Some(Reason::CredentialRequired)) => {
                match self.details.as_ref().and_then(|d| d.get("connect_url")) {
                    Some(Value::String(u)) => format!(
                        "ask the user to open {u} to connect their account, then call again"
                    ),
                    _ => "this API needs a credential of the caller's own; retrying will not help"
                        .to_string(),
                }
            }
            (_, Some(Reason::CredentialParam)) => {
                "remove that query parameter and call again".to_string()
            }
            (ErrorKind::RateLimited, _) => match &self.rate_limit {
                Some(d) => format!("retry after {} s", ceil_secs(d.retry_after)),
                None => "retry later".to_string(),
            },
            (_, Some(Reason::MethodNotAllowed | Reason::PathNotAllowed)) => {
                "call list_apis to see the methods and paths this API allows".to_string()
            }
            (
                ErrorKind::InvalidArguments | ErrorKind::InvalidEndpoint | ErrorKind::InvalidHeader,
                _,
            ) => "change the call as the message says and call again".to_string(),
            (ErrorKind::Unauthorized, _) | (ErrorKind::Forbidden, _) => {
                "this caller may not make this call; retrying will not help".to_string()
            }
            (ErrorKind::PayloadTooLarge, _) => "send a smaller request".to_string(),
            (ErrorKind::UpstreamTimeout | ErrorKind::UpstreamError, _) => {
                "the upstream API may recover; retry later".to_string()
            }
            (
                ErrorKind::AuthUnavailable
                | ErrorKind::AuditUnavailable
                | ErrorKind::LimiterUnavailable
                | ErrorKind::Overloaded,
                _,
            ) => "the gateway cannot serve this now; retry in a minute".to_string(),
            _ => "the call cannot be made as it is".to_string(),
        };
        let message = self.message.trim_end_matches('.');
        format!("{message}. Next: {next}.")
    }

    /// Marks the admission stage that refused (the first mark stays).
    pub fn at(mut self, stage: Stage) -> Self {
        self.stage.get_or_insert(stage);
        self
    }

    /// An error of the reason's kind, with that reason.
    pub fn because(reason: Reason, message: impl Into<String>) -> Self {
        GatewayError::new(reason.kind(), message).with_reason(reason)
    }

    /// Sets the finer `reason`.
    pub fn with_reason(mut self, reason: Reason) -> Self {
        debug_assert_eq!(
            reason.kind(),
            self.kind,
            "{reason:?} belongs to another kind"
        );
        self.reason = Some(reason);
        self
    }

    /// The most specific code: the reason's, else the kind's.
    pub fn reason_code(&self) -> &'static str {
        self.reason.map_or(self.kind.code(), Reason::code)
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
            stage: None,
            rule: None,
            details: None,
        }
    }

    /// Adds `reason`, and `retry_after_s` and `policy` for a rate-limit denial.
    fn with_rate_limit(&self, mut v: Value) -> Value {
        v["reason"] = json!(self.reason_code());
        if let Some(s) = self.stage {
            v["stage"] = json!(s.as_str());
        }
        if let Some(r) = &self.rule {
            v["rule"] = json!(r);
        }
        if let Some(d) = &self.details {
            for (k, x) in d.iter() {
                v[k.as_str()] = x.clone();
            }
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
            RequestTimeout,
            MethodNotSupported,
            Overloaded,
            ApprovalRequired,
            Conflict,
            Gone,
        ];
        let codes: std::collections::HashSet<_> = kinds.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), kinds.len());
        for k in kinds {
            // Every kind is an error status, but for the call that waits for approval.
            assert!(
                (400..600).contains(&k.status()) || k == ApprovalRequired,
                "{k:?}"
            );
        }
        assert_eq!(ApprovalRequired.status(), 202);
        // Reason codes are distinct, and never collide with a kind's code.
        let reason_codes: std::collections::HashSet<_> =
            Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(reason_codes.len(), Reason::ALL.len());
        assert!(reason_codes.is_disjoint(&codes));
        let p = GatewayError::upstream_timeout("slow").problem_json();
        assert_eq!(p["status"], 504);
        assert_eq!(p["error"], "upstream_timeout");
    }
}
