//! The reverse-proxy door: Pingora [`ProxyHttp`] hooks that route `/{api}/{rest}?{query}` to
//! the API's base URL through the shared policy pipeline and egress guard.
//!
//! Hook order for one request:
//! - `request_filter`: route, judge with the pipeline, resolve and vet the destination; a
//!   denial is written here as `application/problem+json` and the request ends;
//! - `upstream_peer`: dial the vetted address, SNI = the API's host;
//! - `upstream_request_filter`: set the path, `Host`, strip the caller's own credentials,
//!   inject the API's credential;
//! - `request_body_filter`: count streamed body bytes against `max_body_size`;
//! - `upstream_response_body_filter`: enforce the total deadline between reads;
//! - `fail_to_proxy`: timeouts become 504, other upstream failures 502, as problem+json.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::auth;
use crate::config::Api;
use crate::egress::{self, Egress};
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::{Gateway, Live};
use crate::policy::{CallRequest, CallerRequest, Door};
use crate::ratelimit::{self, PolicyState};

/// The proxy door.
pub struct ProxyDoor {
    live: Arc<Live>,
}

impl ProxyDoor {
    pub fn new(live: Arc<Live>) -> Self {
        ProxyDoor { live }
    }
}

/// Per-request state.
pub struct ProxyCtx {
    /// The gateway (config, pipeline) this request started on; a reload does not change it.
    gw: Arc<Gateway>,
    /// Counts this request until it is done (a graceful shutdown waits for it).
    _in_flight: crate::gateway::InFlight,
    started: Instant,
    target: Option<Target>,
    body_bytes: u64,
    /// For a signed request: the digest its signature covers, and the body hashed so far.
    body_digest: Option<([u8; 32], sha2::Sha256)>,
    /// A refusal decided while streaming the body, shown by `fail_to_proxy`.
    refusal: Option<GatewayError>,
    /// The error the caller was answered with, for metrics and audit.
    answered: Option<GatewayError>,
    /// Who called, once identified.
    caller: Option<crate::policy::Caller>,
    /// When the upstream exchange began.
    upstream_started: Option<Instant>,
    /// The call's server span (and its upstream client span), when tracing is on.
    span: Option<crate::telemetry::otlp::CallSpan>,
}

struct Target {
    api: Arc<Api>,
    addr: SocketAddr,
    path_and_query: String,
    rate_limits: Vec<PolicyState>,
}

/// Adds the IETF `RateLimit-Policy`/`RateLimit` fields (and, when configured, the legacy
/// `X-RateLimit-*` ones for the policy with the least room left).
fn insert_rate_limit_headers(
    h: &mut ResponseHeader,
    states: &[PolicyState],
    legacy: bool,
) -> Result<()> {
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

/// Headers that carry the caller's own credentials to the gateway. They are consumed here and
/// never forwarded upstream (nor are the signature headers, see [`auth::signature::HEADERS`]).
const CALLER_CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];

async fn write_problem(session: &mut Session, e: &GatewayError, gateway: &Gateway) -> Result<()> {
    let legacy_rate_headers = gateway.config.rate_limits.legacy_headers;
    let body = Bytes::from(e.problem_json().to_string());
    let mut h = ResponseHeader::build(e.kind.status(), Some(7))?;
    if e.kind == ErrorKind::Unauthorized {
        // The metadata lives on the MCP listener, not on this one, so this request's Host
        // says nothing about its address: `auth.resource` (or `server.mcp_listen`) does.
        let url = auth::metadata_url(&gateway.config, None);
        h.insert_header(
            http::header::WWW_AUTHENTICATE,
            auth::www_authenticate(e, &url),
        )?;
    }
    h.insert_header(http::header::CONTENT_TYPE, "application/problem+json")?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if let Some(d) = &e.rate_limit {
        h.insert_header(
            http::header::RETRY_AFTER,
            ratelimit::ceil_secs(d.retry_after).to_string(),
        )?;
        insert_rate_limit_headers(&mut h, &d.states, legacy_rate_headers)?;
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}

impl ProxyDoor {
    /// The gateway path for an upstream `Location` that lands in an allow-listed API.
    fn gateway_location(gw: &Gateway, t: &Target, location: &str) -> Option<String> {
        let here = t.api.base.url_of(&t.path_and_query)?;
        let mut next = here.join(location).ok()?;
        // Never hand an injected query credential back to the caller.
        let hidden: Vec<&str> = [&t.api]
            .into_iter()
            .chain(gw.config.apis.iter())
            .filter_map(|a| match &a.credential {
                Some(crate::config::Credential {
                    placement: crate::config::CredentialPlacement::Query(name),
                    ..
                }) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        if next.query().is_some() && !hidden.is_empty() {
            let kept: Vec<(String, String)> = next
                .query_pairs()
                .filter(|(k, _)| !hidden.contains(&k.as_ref()))
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            next.set_query(None);
            if !kept.is_empty() {
                next.query_pairs_mut().extend_pairs(kept);
            }
        }
        let (api, endpoint) = gw.config.api_for_url(&next, &t.api.name)?;
        Some(format!("/{}{endpoint}", api.name))
    }

    /// The configured API a proxy path names in its first segment (`/{api}/…`), if any.
    fn routed_api<'g>(gw: &'g Gateway, path: &str) -> Option<&'g Arc<Api>> {
        let name = path.trim_start_matches('/').split('/').next().unwrap_or("");
        gw.config.apis.iter().find(|a| a.name == name)
    }

    /// The call's server span, named `{method} {route}` after the HTTP conventions; the route
    /// names a configured API or nothing, so span names stay few.
    fn start_span(gw: &Gateway, session: &Session) -> Option<crate::telemetry::otlp::CallSpan> {
        use opentelemetry::KeyValue;
        gw.tracing.as_ref()?;
        let req = session.req_header();
        let mut trace = crate::trace::TraceContext::from_headers(&req.headers);
        let route = Self::routed_api(gw, req.uri.path()).map(|a| format!("/{}/{{path}}", a.name));
        let method = req.method.as_str();
        let name = match &route {
            Some(r) => format!("{method} {r}"),
            None => method.to_string(),
        };
        gw.server_span(name, &mut trace, || {
            let mut attrs = vec![
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("url.path", req.uri.path().to_string()),
                KeyValue::new("url.scheme", "http"),
                KeyValue::new("api_gateway.door", "proxy"),
            ];
            if let Some(r) = route {
                attrs.push(KeyValue::new("http.route", r));
            }
            if let Some(a) = session.client_addr().and_then(|a| a.as_inet()) {
                attrs.push(KeyValue::new("network.peer.address", a.ip().to_string()));
            }
            if let Some(ua) = req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
            {
                attrs.push(KeyValue::new("user_agent.original", ua.to_string()));
            }
            attrs
        })
    }

    /// Identifies the caller, routes and judges the request; returns the upstream target or
    /// the caller-facing error.
    async fn admit(
        &self,
        session: &Session,
        ctx: &mut ProxyCtx,
    ) -> std::result::Result<Target, GatewayError> {
        let gw = ctx.gw.clone();
        let req = session.req_header();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let raw_head = session.as_http1().map(|h1| h1.get_headers_raw_bytes());
        let caller = gw
            .pipeline
            .identify(&CallerRequest {
                peer,
                method: &req.method,
                path: req.uri.path(),
                query: req.uri.query().unwrap_or(""),
                headers: &req.headers,
                raw_head: raw_head.as_deref(),
                body: None,
            })
            .await?;
        let mut caller = caller;
        if let Some(s) = ctx.span.as_mut() {
            // A trace started here: the span's trace id is the one audit records carry.
            caller.trace.trace_id = s.trace_id();
            s.set(opentelemetry::KeyValue::new(
                "api_gateway.principal",
                caller.principal.id.clone(),
            ));
        }
        ctx.caller = Some(caller.clone());
        if let Some(v) = &caller.signature {
            use sha2::Digest;
            ctx.body_digest = Some((v.content_sha256, sha2::Sha256::new()));
        }
        let path = req.uri.path();
        let (api_name, rest) = match path.trim_start_matches('/').split_once('/') {
            Some((a, r)) => (a, r),
            None => (path.trim_start_matches('/'), ""),
        };
        if api_name.is_empty() {
            return Err(GatewayError::unknown_api("route requests as /{api}/{path}"));
        }
        let endpoint = match req.uri.query() {
            Some(q) => format!("/{rest}?{q}"),
            None => format!("/{rest}"),
        };
        let header_str =
            |name: http::header::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
        let content_length = match header_str(http::header::CONTENT_LENGTH) {
            Some(v) => Some(
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| GatewayError::invalid_header("Content-Length is not a number"))?,
            ),
            None => None,
        };
        let chunked = req.headers.contains_key(http::header::TRANSFER_ENCODING);
        if !chunked && content_length.unwrap_or(0) == 0 {
            // No body will stream, so a signature's body digest is checked now.
            if let Some(v) = &caller.signature {
                crate::policy::check_body_digest(v, b"")?;
            }
            ctx.body_digest = None;
        }
        let decision = gw
            .pipeline
            .evaluate(&CallRequest {
                door: Door::Proxy,
                api: api_name,
                method: &req.method,
                endpoint: &endpoint,
                content_length,
                has_body: chunked || content_length.is_some_and(|n| n > 0),
                content_type: header_str(http::header::CONTENT_TYPE),
                caller: &caller,
            })
            .await?;
        let addr = gw.egress.resolve(&decision.api).await?;
        let path_and_query =
            egress::upstream_path_and_query(&decision.api, &decision.endpoint, &[]);
        Ok(Target {
            api: decision.api,
            addr,
            path_and_query,
            rate_limits: decision.rate_limits,
        })
    }
}

#[async_trait]
impl ProxyHttp for ProxyDoor {
    type CTX = ProxyCtx;

    fn new_ctx(&self) -> ProxyCtx {
        ProxyCtx {
            gw: self.live.current(),
            _in_flight: self.live.enter(),
            started: Instant::now(),
            target: None,
            body_bytes: 0,
            body_digest: None,
            refusal: None,
            answered: None,
            caller: None,
            upstream_started: None,
            span: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut ProxyCtx) -> Result<bool> {
        ctx.started = Instant::now();
        ctx.span = Self::start_span(&ctx.gw, session);
        let admitted = match self.admit(session, ctx).await {
            // A call that could not be audited is refused when audit.on_failure = "block".
            Ok(t) => ctx.gw.audit_admit().map(|()| t),
            Err(e) => Err(e),
        };
        match admitted {
            Ok(t) => {
                ctx.target = Some(t);
                Ok(false)
            }
            Err(e) => {
                tracing::info!(
                    error = e.kind.code(),
                    reason = e.reason.unwrap_or(""),
                    door = "proxy",
                    "request refused"
                );
                write_problem(session, &e, &ctx.gw).await?;
                ctx.answered = Some(e);
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut ProxyCtx,
    ) -> Result<Box<HttpPeer>> {
        let t = ctx
            .target
            .as_ref()
            .ok_or_else(|| Error::explain(InternalError, "no target after request_filter"))?;
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(Egress::peer(&t.api, t.addr)))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut ProxyCtx,
    ) -> Result<()> {
        let t = ctx
            .target
            .as_ref()
            .ok_or_else(|| Error::explain(InternalError, "no target after request_filter"))?;
        let uri: http::Uri = t
            .path_and_query
            .parse()
            .map_err(|_| Error::explain(InternalError, "upstream URI did not parse"))?;
        upstream.set_uri(uri);
        upstream.insert_header(http::header::HOST, t.api.base.host_header())?;
        for h in CALLER_CREDENTIAL_HEADERS
            .iter()
            .chain(auth::signature::HEADERS)
        {
            upstream.remove_header(*h);
        }
        // Forwarding metadata from the caller is not trusted or passed on.
        let forwarded: Vec<http::HeaderName> = upstream
            .headers
            .keys()
            .filter(|k| {
                k.as_str().starts_with("x-forwarded-") || *k == "forwarded" || *k == "x-real-ip"
            })
            .cloned()
            .collect();
        for k in forwarded {
            upstream.remove_header(&k);
        }
        // The caller's trace continues upstream, under this hop's client span.
        if let Some(c) = &ctx.caller {
            let tp = ctx.gw.upstream_traceparent(
                ctx.span.as_mut(),
                &c.trace,
                upstream.method.as_str(),
                &t.api,
                &t.path_and_query,
            );
            upstream.insert_header("traceparent", tp)?;
        }
        egress::inject_credential_header(&t.api, upstream)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut ProxyCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            let limit = ctx.gw.config.request.max_body_size;
            if ctx.body_bytes > limit {
                return Error::e_explain(
                    HTTPStatus(413),
                    format!("request body exceeds {limit} bytes"),
                );
            }
            if let Some((_, hasher)) = &mut ctx.body_digest {
                sha2::Digest::update(hasher, b);
            }
        }
        // A signed body is checked before its last chunk leaves: on a mismatch the upstream
        // never receives a complete request.
        if end_of_stream {
            if let Some((expected, hasher)) = ctx.body_digest.take() {
                let actual: [u8; 32] = sha2::Digest::finalize(hasher).into();
                if actual != expected {
                    ctx.refusal = Some(auth::unauthorized(
                        "signature_invalid",
                        "the body does not match X-Content-SHA256",
                    ));
                    return Error::e_explain(HTTPStatus(401), "body digest mismatch");
                }
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut ProxyCtx,
    ) -> Result<Option<std::time::Duration>> {
        // Each read is bounded by the peer's read timeout; this bounds the whole exchange.
        if let Some(t) = &ctx.target {
            if ctx.started.elapsed() > t.api.timeout {
                return Error::e_explain(ReadTimedout, "total upstream deadline exceeded");
            }
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut ProxyCtx,
    ) -> Result<()> {
        let Some(t) = &ctx.target else { return Ok(()) };
        if let Some(s) = ctx.span.as_mut() {
            s.upstream_answered(response.status.as_u16());
        }
        insert_rate_limit_headers(
            response,
            &t.rate_limits,
            ctx.gw.config.rate_limits.legacy_headers,
        )?;
        // A redirect into an allow-listed API points back through the gateway, so a client
        // that follows it stays under policy (and never learns the upstream's address).
        let rewritten = response
            .headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|loc| Self::gateway_location(&ctx.gw, t, loc));
        if let Some(loc) = rewritten {
            response.insert_header(http::header::LOCATION, loc)?;
        }
        if t.api.credential.is_none() {
            return Ok(());
        }
        let echoed: Vec<(http::HeaderName, http::HeaderValue)> = response
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let masked =
                    egress::redact_credential(&t.api, Bytes::copy_from_slice(v.as_bytes()));
                (masked != v.as_bytes())
                    .then(|| (k.clone(), http::HeaderValue::from_bytes(&masked)))
            })
            .filter_map(|(k, v)| v.ok().map(|v| (k, v)))
            .collect();
        for (k, v) in echoed {
            response.insert_header(k, v)?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut ProxyCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let (Some(t), Some(b)) = (&ctx.target, body.take()) {
            *body = Some(egress::redact_credential(&t.api, b));
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut ProxyCtx,
    ) -> FailToProxy {
        let err = match (e.etype(), &ctx.target) {
            _ if ctx.refusal.is_some() => ctx.refusal.take().expect("checked"),
            (HTTPStatus(413), _) => GatewayError::payload_too_large(format!(
                "request body exceeds the limit of {} bytes",
                ctx.gw.config.request.max_body_size
            )),
            (HTTPStatus(code), _) if *code < 500 => {
                GatewayError::new(ErrorKind::InvalidArguments, "bad request")
            }
            (_, Some(t)) if e.esource() != &ErrorSource::Downstream => {
                egress::map_pingora_error(&t.api, e)
            }
            (ReadError | WriteError | ConnectionClosed, _) => {
                // The caller went away; there is nobody to answer.
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
            _ => GatewayError::internal("the request could not be proxied"),
        };
        tracing::info!(error = err.kind.code(), door = "proxy", cause = %e.etype().as_str(), "proxy failure");
        let status = err.kind.status();
        // If the response head was already sent there is nothing sane left to write.
        if session.response_written().is_none() {
            // The connection is not reused (the request body may be unread), so say so:
            // a client must not send its next request on it.
            session.set_keepalive(None);
            let _ = write_problem(session, &err, &ctx.gw).await;
        }
        ctx.answered = Some(err);
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut ProxyCtx,
    ) -> Result<()> {
        if let Some(t) = &ctx.target {
            let principal = ctx.caller.as_ref().map(|c| c.principal.id.as_str());
            crate::telemetry::metrics().upstream(Door::Proxy, &t.api, reused, principal);
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut ProxyCtx) {
        let req = session.req_header();
        // A configured API name, or `unknown`: the label set stays bounded.
        let api = match &ctx.target {
            Some(t) => t.api.name.as_str(),
            None => {
                Self::routed_api(&ctx.gw, req.uri.path()).map_or("unknown", |a| a.name.as_str())
            }
        };
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.answered.as_ref().map(|e| e.kind.status()))
            .unwrap_or(0);
        crate::telemetry::metrics().call(
            Door::Proxy,
            api,
            req.method.as_str(),
            status,
            ctx.started.elapsed(),
            ctx.answered.as_ref(),
        );
        if let Some(mut span) = ctx.span.take() {
            if ctx.target.is_some() {
                span.set(opentelemetry::KeyValue::new(
                    "api_gateway.api",
                    api.to_string(),
                ));
            }
            span.end(status, ctx.answered.as_ref());
        }

        ctx.gw.audit(|| {
            let target = match req.uri.query() {
                Some(q) => format!("{}?{q}", req.uri.path()),
                None => req.uri.path().to_string(),
            };
            let mut event = crate::audit::AuditEvent::new(
                Door::Proxy,
                ctx.caller.as_ref(),
                req.method.as_str(),
                &target,
            );
            event.api = api.to_string();
            event.status = status;
            event.bytes_in = session.body_bytes_read() as u64;
            event.bytes_out = session.body_bytes_sent() as u64;
            event.upstream_ms = ctx
                .upstream_started
                .map(|t| t.elapsed().as_secs_f64() * 1000.0);
            if let Some(t) = &ctx.target {
                event.cost = t.api.cost_per_call;
                event.rate_limit = crate::ratelimit::tightest_json(&t.rate_limits);
            }
            if let Some(e) = &ctx.answered {
                event.failed(e);
                event.cost = None;
            }
            event
        });
    }
}
