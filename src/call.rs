//! What both doors do around a call, written once: the call record (opened when a request
//! arrives, finished once into metrics, span, audit event and log line) and the refusal
//! writer for HTTP (`application/problem+json`, with `WWW-Authenticate` and rate-limit
//! fields). The MCP refusal shape is [`GatewayError::tool_error_json`].

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pingora::http::ResponseHeader;

use crate::audit::AuditEvent;
use crate::auth::Caller;
use crate::config::{Api, Config};
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::Gateway;
use crate::policy::Admitted;
use crate::ratelimit::{self, PolicyState};
use crate::telemetry::otlp::CallSpan;
use crate::types::Door;

/// One call, from arrival to answer.
pub struct CallRecord {
    door: Door,
    started: Instant,
    method: String,
    /// The configured API the call names, or `unknown`: metric labels stay bounded.
    api_label: String,
    /// The admitted API, once admitted.
    api: Option<Arc<Api>>,
    caller: Option<Arc<Caller>>,
    /// Built at arrival, so its timestamp is the call's; `None` when auditing is off.
    event: Option<AuditEvent>,
    /// The call's server span (and its upstream client span), when tracing is on.
    pub span: Option<CallSpan>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// How the answer was shaped for a model (MCP door): sizes, cuts, redaction counts.
    pub shaping: Option<serde_json::Value>,
    /// When the upstream exchange began.
    pub upstream_started: Option<Instant>,
    rate_limit: Option<serde_json::Value>,
    /// Would-be refusals of rules in `mode = "shadow"`: `{stage, rule, reason}` each.
    shadow: Vec<serde_json::Value>,
    /// A token endpoint request made for this call's credential (exchange or refresh):
    /// start, end, success. Traced as a child span.
    token_request: Option<(std::time::SystemTime, std::time::SystemTime, bool)>,
}

impl CallRecord {
    /// Opens the record of a call to `api` (the configured API it names, if any);
    /// `target` gives the path as the caller wrote it, for audit, and is called only when
    /// calls are audited.
    pub fn open(
        gw: &Gateway,
        door: Door,
        method: &str,
        api: Option<&Arc<Api>>,
        target: impl FnOnce() -> String,
        tool: Option<std::borrow::Cow<'static, str>>,
    ) -> CallRecord {
        let api_label = api.map_or("unknown", |a| a.name.as_str()).to_string();
        let event = gw.auditing().then(|| {
            let mut e = AuditEvent::new(door, None, method, &target());
            e.tool = tool;
            e
        });
        CallRecord {
            door,
            started: Instant::now(),
            method: method.to_string(),
            api_label,
            api: None,
            caller: None,
            event,
            span: None,
            bytes_in: 0,
            bytes_out: 0,
            shaping: None,
            upstream_started: None,
            rate_limit: None,
            shadow: Vec::new(),
            token_request: None,
        }
    }

    /// The configured API this call names, or `unknown`.
    pub fn api_label(&self) -> &str {
        &self.api_label
    }

    /// Time since the call arrived.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Who called, once identified.
    pub fn identified(&mut self, caller: &Arc<Caller>) {
        if let Some(e) = &mut self.event {
            e.set_caller(caller);
        }
        self.caller = Some(caller.clone());
    }

    /// The call was admitted.
    pub fn admitted(&mut self, a: &Admitted) {
        if self.caller.is_none() {
            self.identified(&a.caller);
        }
        self.api_label = a.api.name.clone();
        self.rate_limit = ratelimit::tightest_json(&a.rate_limits);
        self.api = Some(a.api.clone());
        if let (Some(e), Some(c)) = (&mut self.event, &a.credential) {
            e.credential_source = Some(c.source);
            e.credential_fingerprint = Some(c.fingerprint.to_string());
        }
        if let (Some(span), Some(c)) = (&mut self.span, &a.credential) {
            span.set(opentelemetry::KeyValue::new(
                "api_gateway.credential_source",
                c.source,
            ));
        }
        self.token_request = a.credential.as_ref().and_then(|c| c.fetched);
        if let (Some(e), Some(u)) = (&mut self.event, &a.approval) {
            e.approval_id = Some(u.id.clone());
            e.call_digest = Some(u.digest.clone());
        }
        self.shadow = a
            .shadow
            .iter()
            .map(|e| {
                serde_json::json!({
                    "stage": e.stage.map(crate::error::Stage::as_str),
                    "rule": e.rule,
                    "reason": e.reason_code(),
                })
            })
            .collect();
    }

    /// Finishes the record: the call's metrics, span, audit event and, for a refusal or
    /// failure, its log line. `status` is the caller's answer (the upstream's, or the
    /// gateway's for an error). `target` gives the path as the caller wrote it, for the log
    /// line, and is called only for a refusal or failure of a call that is not audited (an
    /// audited one has it in its event): an admitted call makes no copy of it.
    pub fn finish(
        mut self,
        gw: &Gateway,
        status: u16,
        error: Option<&GatewayError>,
        target: impl FnOnce() -> String,
    ) {
        let door = self.door;
        if let Some(e) = error {
            let path = match &self.event {
                Some(ev) => ev.path.clone(),
                None => target(),
            };
            let request_id = match &self.event {
                Some(ev) => ev.request_id.clone(),
                None => crate::audit::request_id(),
            };
            let principal = self
                .caller
                .as_ref()
                .map_or("unidentified", |c| c.principal.id.as_str());
            log_refusal(&LogLine {
                request_id: &request_id,
                door,
                api: &self.api_label,
                method: &self.method,
                path: &path,
                principal,
                status,
                error: e,
            });
        }
        for s in &self.shadow {
            let label = |k: &str| s[k].as_str().unwrap_or("").to_string();
            crate::telemetry::metrics()
                .shadow_decisions
                .with_label_values(&[&label("stage"), &label("rule"), &label("reason")])
                .inc();
        }
        crate::telemetry::metrics().call(
            door,
            &self.api_label,
            &self.method,
            status,
            self.started.elapsed(),
            error,
        );
        if let Some(mut span) = self.span.take() {
            if self.api.is_some() {
                span.set(opentelemetry::KeyValue::new(
                    "api_gateway.api",
                    self.api_label.clone(),
                ));
            }
            if !self.shadow.is_empty() {
                span.set(opentelemetry::KeyValue::new(
                    "api_gateway.shadow",
                    serde_json::Value::Array(self.shadow.clone()).to_string(),
                ));
            }
            if let (Some((start, end, ok)), Some(t)) = (self.token_request, &gw.tracing) {
                span.child(t, "credential token request", start, end, ok);
            }
            // An MCP call's HTTP status belongs to its JSON-RPC exchange, not to the call.
            span.end(if door == Door::Mcp { 0 } else { status }, error);
        }
        if let Some(mut event) = self.event.take() {
            event.api = self.api_label.clone();
            event.status = status;
            event.bytes_in = self.bytes_in;
            event.bytes_out = self.bytes_out;
            event.shaping = self.shaping.take();
            if !self.shadow.is_empty() {
                event.shadow = Some(serde_json::Value::Array(std::mem::take(&mut self.shadow)));
            }
            event.upstream_ms = self
                .upstream_started
                .map(|t| t.elapsed().as_secs_f64() * 1000.0);
            event.rate_limit = self.rate_limit.take();
            event.cost = self.api.as_ref().and_then(|a| a.cost_per_call);
            if let Some(e) = error {
                event.failed(e);
                event.cost = None;
            }
            gw.audit(|| event);
        }
    }
}

/// What a refusal's or failure's log line says: enough to find the call (its request id is
/// the audit record's) and to act on it.
pub struct LogLine<'a> {
    pub request_id: &'a str,
    pub door: Door,
    pub api: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub principal: &'a str,
    pub status: u16,
    pub error: &'a GatewayError,
}

/// `s` with its control characters escaped (`\n` as the two characters `\n`), so caller
/// text cannot start a log line of its own.
fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect::<String>()
        .into()
}

/// Logs one refusal (at info: a refusal is the gateway working) or failure (warn: the
/// upstream or the gateway failed), one line each, query values redacted.
pub fn log_refusal(l: &LogLine<'_>) {
    let e = l.error;
    let reason = e.reason.map_or(e.kind.code(), crate::error::Reason::code);
    // Caller text is quoted with its control characters escaped, so it cannot forge a line,
    // and cut; a connect link's single-use token never reaches the log.
    let path = crate::types::truncate_chars(&crate::audit::redact_query(l.path), 512).to_string();
    let detail = match e.reason {
        Some(crate::error::Reason::CredentialRequired) => {
            "the caller has no credential for this API"
        }
        _ => crate::types::truncate_chars(&e.message, 512),
    };
    let failed = matches!(
        e.kind,
        crate::error::ErrorKind::UpstreamError
            | crate::error::ErrorKind::UpstreamTimeout
            | crate::error::ErrorKind::Internal
    );
    macro_rules! line {
        ($level:ident, $msg:literal) => {
            tracing::$level!(
                request_id = l.request_id,
                door = l.door.as_str(),
                api = l.api,
                method = l.method,
                path = %printable(&path),
                principal = l.principal,
                status = l.status,
                error = e.kind.code(),
                reason,
                stage = e.stage.map(crate::error::Stage::as_str),
                rule = e.rule.as_deref(),
                detail = %printable(detail),
                $msg
            )
        };
    }
    if failed {
        line!(warn, "call failed");
    } else {
        line!(info, "call refused");
    }
}

/// Adds the IETF `RateLimit-Policy`/`RateLimit` fields (and, when configured, the legacy
/// `X-RateLimit-*` ones for the policy with the least room left).
pub fn insert_rate_limit_headers(
    h: &mut ResponseHeader,
    states: &[PolicyState],
    legacy: bool,
) -> pingora::Result<()> {
    if states.is_empty() {
        return Ok(());
    }
    let (policy, limit) = ratelimit::header_values(states);
    h.insert_header("ratelimit-policy", policy)?;
    h.insert_header("ratelimit", limit)?;
    if legacy {
        if let Some(s) = states.iter().min_by_key(|s| s.remaining) {
            h.insert_header("x-ratelimit-limit", s.requests.to_string())?;
            h.insert_header("x-ratelimit-remaining", s.remaining.to_string())?;
            h.insert_header(
                "x-ratelimit-reset",
                ratelimit::ceil_secs(s.reset).to_string(),
            )?;
        }
    }
    Ok(())
}

/// A refusal as HTTP: `application/problem+json` with its status, `WWW-Authenticate` on a 401
/// (pointing at the protected-resource metadata; `host` is the request's, when the metadata
/// is served on the same listener), and `Retry-After` and rate-limit fields on a 429.
pub fn problem(
    config: &Config,
    e: &GatewayError,
    host: Option<&str>,
) -> pingora::Result<(ResponseHeader, Bytes)> {
    let e = e.for_caller(config.explain_denials);
    let body = Bytes::from(e.problem_json().to_string());
    let mut h = ResponseHeader::build(e.kind.status(), Some(7))?;
    if e.kind == ErrorKind::Unauthorized {
        let url = crate::auth::metadata_url(config, host);
        h.insert_header(
            http::header::WWW_AUTHENTICATE,
            crate::auth::www_authenticate(&e, &url),
        )?;
    }
    h.insert_header(http::header::CONTENT_TYPE, "application/problem+json")?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if e.kind == ErrorKind::ApprovalRequired {
        // Where the request's state can be followed (admin listener), and when to retry.
        let detail = |k: &str| e.details.as_ref().and_then(|d| d.get(k)).cloned();
        if let Some(serde_json::Value::String(id)) = detail("approval_id") {
            h.insert_header(http::header::LOCATION, format!("/approvals/{id}"))?;
        }
        if let Some(serde_json::Value::Number(n)) = detail("retry_after_s") {
            h.insert_header(http::header::RETRY_AFTER, n.to_string())?;
        }
    }
    if let Some(d) = &e.rate_limit {
        h.insert_header(
            http::header::RETRY_AFTER,
            ratelimit::ceil_secs(d.retry_after).to_string(),
        )?;
        insert_rate_limit_headers(&mut h, &d.states, config.rate_limits.legacy_headers)?;
    }
    Ok((h, body))
}

#[cfg(test)]
mod log_tests {
    /// Caller text cannot begin a log line of its own.
    #[test]
    fn control_characters_in_logged_text_are_escaped() {
        assert_eq!(super::printable("/a/b"), "/a/b");
        assert_eq!(
            super::printable("/x\nINFO call refused principal=admin\r\t"),
            "/x\\nINFO call refused principal=admin\\r\\t"
        );
    }
}
