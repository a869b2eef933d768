//! The reverse-proxy door: Pingora [`ProxyHttp`] hooks that route `/{api}/{rest}?{query}` to
//! the API's base URL. Admission decides ([`Pipeline::admit`]); these hooks translate its
//! outcome into Pingora's phases.
//!
//! Hook order for one request:
//! - `request_filter`: describe the call, admit or refuse it; a refusal is written here as
//!   `application/problem+json` and the request ends;
//! - `upstream_peer`: dial the vetted address, SNI = the API's host;
//! - `upstream_request_filter`: set the path and `Host`, apply the outbound header plan,
//!   inject the credential;
//! - `request_body_filter`: count streamed body bytes against `max_body_size`, finish a
//!   signed body's digest;
//! - `upstream_response_body_filter`: enforce the total deadline between reads;
//! - `fail_to_proxy`: timeouts become 504, other upstream failures 502, as problem+json;
//! - `logging`: finish the call record.
//!
//! [`Pipeline::admit`]: crate::policy::Pipeline::admit

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::call::{insert_rate_limit_headers, problem, CallRecord};
use crate::egress::{self, Egress, StreamRedactor};
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::{Gateway, Live};
use crate::policy::body::StreamGuard;
use crate::policy::{outbound, Admitted, Call, CallerRequest, Door, Payload, Who};
use crate::trace::TraceContext;

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
    /// The call's record, opened in `request_filter`, finished in `logging`.
    record: Option<CallRecord>,
    /// The admitted call.
    target: Option<Admitted>,
    /// The admitted body's guards (size, a signed body's digest), applied as it streams.
    body: Option<StreamGuard>,
    /// Masks the API's credential in the response body, across chunk boundaries.
    redactor: Option<StreamRedactor>,
    /// A refusal decided after admission (a streamed body, a response that cannot be
    /// masked), shown by `fail_to_proxy`.
    refusal: Option<GatewayError>,
    /// The error the caller was answered with, for metrics and audit.
    answered: Option<GatewayError>,
    /// Response body bytes received from the upstream so far.
    upstream_bytes: u64,
    /// With `response.redact.proxy_door`: the whole body, held until its end so it can be
    /// redacted like an MCP answer (then sent chunked, its length having changed).
    held: Option<Vec<u8>>,
    /// A refused call's approval request, to complete once its body is read.
    approval_draft: Option<(Box<crate::approvals::Record>, Arc<crate::auth::Caller>)>,
}

async fn write_problem(session: &mut Session, e: &GatewayError, gateway: &Gateway) -> Result<()> {
    // The metadata lives on the MCP listener, not on this one, so this request's Host says
    // nothing about its address: `auth.resource` (or `server.mcp_listen`) does.
    let (h, body) = problem(&gateway.config, e, None)?;
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}

impl ProxyDoor {
    /// The API a proxy path names in its first segment (`/{api}/…`), and the endpoint after it.
    fn route(path: &str) -> (&str, &str) {
        match path.trim_start_matches('/').split_once('/') {
            Some((a, r)) => (a, r),
            None => (path.trim_start_matches('/'), ""),
        }
    }

    /// The call's server span, named `{method} {route}` after the HTTP conventions; the route
    /// names a configured API or nothing, so span names stay few. A call that starts a trace
    /// gives `trace` its id.
    fn start_span(
        gw: &Gateway,
        session: &Session,
        api: Option<&str>,
        trace: &mut TraceContext,
    ) -> Option<crate::telemetry::otlp::CallSpan> {
        use opentelemetry::KeyValue;
        gw.tracing.as_ref()?;
        let req = session.req_header();
        let route = api.map(|a| format!("/{a}/{{path}}"));
        let method = req.method.as_str();
        let name = match &route {
            Some(r) => format!("{method} {r}"),
            None => method.to_string(),
        };
        gw.server_span(name, trace, || {
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

    /// Describes the request as a call and admits or refuses it.
    async fn admit(
        session: &Session,
        ctx: &mut Box<ProxyCtx>,
    ) -> std::result::Result<Admitted, GatewayError> {
        let gw = ctx.gw.clone();
        let req = session.req_header();
        let path = req.uri.path();
        let (api_name, rest) = Self::route(path);
        let endpoint = match req.uri.query() {
            Some(q) => format!("/{rest}?{q}"),
            None => format!("/{rest}"),
        };
        let named = gw.config.api(api_name);
        let mut record = CallRecord::open(
            &gw,
            Door::Proxy,
            req.method.as_str(),
            named,
            || match req.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            },
            None,
        );
        let mut trace = TraceContext::from_headers(&req.headers);
        record.span = Self::start_span(&gw, session, named.map(|a| a.name.as_str()), &mut trace);
        let raw_head = session.as_http1().map(|h1| h1.get_headers_raw_bytes());
        let call = Call {
            door: Door::Proxy,
            who: Who::Request(CallerRequest {
                door: Door::Proxy,
                peer: session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip()),
                method: &req.method,
                path,
                query: req.uri.query().unwrap_or(""),
                headers: &req.headers,
                raw_head: raw_head.as_deref(),
                body: None,
                trace,
            }),
            api: api_name,
            method: &req.method,
            endpoint: &endpoint,
            query: &[],
            opaque_segments: false,
            payload: Payload::Streamed {
                headers: &req.headers,
            },
        };
        let outcome = gw.pipeline.admit(&call).await;
        let caller = match &outcome {
            Ok(a) => Some(&a.caller),
            Err(r) => r.caller.as_ref(),
        };
        if let Some(c) = caller {
            record.identified(c);
            if let Some(s) = record.span.as_mut() {
                s.set(opentelemetry::KeyValue::new(
                    "api_gateway.principal",
                    c.principal.id.clone(),
                ));
            }
        }
        let outcome = outcome.map_err(|r| {
            ctx.approval_draft = r.approval_draft.zip(r.caller);
            r.error
        });
        if let Ok(a) = &outcome {
            record.admitted(a);
        }
        ctx.record = Some(record);
        outcome
    }

    /// A call that needs approval on its first sending: its body is read (within
    /// `max_body_size`) to complete the request, which the answer then names.
    async fn request_approval(
        session: &mut Session,
        ctx: &mut Box<ProxyCtx>,
        draft: crate::approvals::Record,
        caller: &crate::auth::Caller,
    ) -> GatewayError {
        let max = ctx.gw.config.request.max_body_size;
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if (body.len() + chunk.len()) as u64 <= max => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    session.set_keepalive(None);
                    return GatewayError::payload_too_large(format!(
                        "the request body is larger than security.request.max_body_size ({max} bytes)"
                    ));
                }
                Ok(None) => break,
                Err(_) => {
                    session.set_keepalive(None);
                    return GatewayError::invalid_arguments("the request body could not be read");
                }
            }
        }
        ctx.gw.pipeline.request_approval(draft, &body, caller).await
    }
}

#[async_trait]
impl ProxyHttp for ProxyDoor {
    /// Boxed: Pingora keeps the context inside each request's future, which it moves into
    /// the heap (twice per request); a pointer moves instead of 2.5 KB.
    type CTX = Box<ProxyCtx>;

    fn new_ctx(&self) -> Box<ProxyCtx> {
        Box::new(ProxyCtx {
            gw: self.live.current(),
            _in_flight: self.live.enter(),
            record: None,
            target: None,
            body: None,
            redactor: None,
            refusal: None,
            answered: None,
            upstream_bytes: 0,
            held: None,
            approval_draft: None,
        })
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<ProxyCtx>) -> Result<bool> {
        match Self::admit(session, ctx).await {
            Ok(admitted) => {
                let guard = StreamGuard::new(&ctx.gw.config.request, admitted.body_digest);
                // A body bound by an approval that differs is that approval's mismatch.
                ctx.body = Some(match &admitted.approval {
                    Some(a) if a.body_sha256.is_some() => guard.on_mismatch(
                        crate::policy::approval::mismatch(&a.id, "another body")
                            .at(crate::error::Stage::Approval),
                    ),
                    _ => guard,
                });
                ctx.redactor = StreamRedactor::new(&admitted.api);
                ctx.target = Some(admitted);
                Ok(false)
            }
            Err(mut e) => {
                if let Some((draft, caller)) = ctx.approval_draft.take() {
                    if e.kind == crate::error::ErrorKind::ApprovalRequired {
                        e = Self::request_approval(session, ctx, *draft, &caller).await;
                    }
                }
                if session.req_header().method == http::Method::CONNECT {
                    // What follows a CONNECT head is not HTTP: the connection is not reused.
                    session.set_keepalive(None);
                }
                write_problem(session, &e, &ctx.gw).await?;
                ctx.answered = Some(e);
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Box<ProxyCtx>,
    ) -> Result<Box<HttpPeer>> {
        let t = ctx
            .target
            .as_ref()
            .ok_or_else(|| Error::explain(InternalError, "no target after request_filter"))?;
        if let Some(r) = ctx.record.as_mut() {
            r.upstream_started = Some(Instant::now());
        }
        Ok(Box::new(Egress::peer(&t.api, t.addr)))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Box<ProxyCtx>,
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
        // The outbound rule: the caller's own credentials and forwarding metadata stay here.
        for h in &t.headers.strip {
            upstream.remove_header(h);
        }
        // The caller's trace continues upstream, under this hop's client span.
        let tp = ctx.gw.upstream_traceparent(
            ctx.record.as_mut().and_then(|r| r.span.as_mut()),
            &t.caller.trace,
            upstream.method.as_str(),
            &t.api,
            &t.path_and_query,
        );
        upstream.insert_header("traceparent", tp)?;
        for (name, value) in &t.headers.set {
            upstream.insert_header(name.clone(), value.clone())?;
        }
        if let Some((name, value)) = &t.headers.credential {
            upstream.remove_header(name);
            upstream.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<ProxyCtx>,
    ) -> Result<()> {
        let Some(guard) = ctx.body.as_mut() else {
            return Ok(());
        };
        let checked = match body {
            Some(b) => guard.chunk(b),
            None => Ok(()),
        };
        match checked.and_then(|()| if end_of_stream { guard.end() } else { Ok(()) }) {
            Ok(()) => Ok(()),
            // Shown by `fail_to_proxy`.
            Err(e) => {
                let status = e.kind.status();
                ctx.refusal = Some(e);
                Error::e_explain(HTTPStatus(status), "request body refused")
            }
        }
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<ProxyCtx>,
    ) -> Result<Option<std::time::Duration>> {
        // The API's read cap, for a body without a Content-Length that outgrows it: the
        // exchange is broken off (the client sees an incomplete body, never a short one).
        ctx.upstream_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if let Some(cap) = ctx
            .target
            .as_ref()
            .and_then(|t| t.api.response.proxy_max_bytes)
        {
            if ctx.upstream_bytes > cap as u64 {
                ctx.refusal = Some(GatewayError::because(
                    crate::error::Reason::UpstreamResponseTooLarge,
                    format!("the upstream body went past response.max_upstream_bytes ({cap}); it was broken off"),
                ));
                return Error::e_explain(
                    HTTPStatus(502),
                    "upstream body over response.max_upstream_bytes",
                );
            }
        }
        // Each read is bounded by the peer's read timeout; this bounds the whole exchange.
        if let Some(t) = &ctx.target {
            if ctx
                .record
                .as_ref()
                .is_some_and(|r| r.elapsed() > t.api.timeout)
            {
                return Error::e_explain(ReadTimedout, "total upstream deadline exceeded");
            }
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Box<ProxyCtx>,
    ) -> Result<()> {
        let Some(t) = &ctx.target else { return Ok(()) };
        if let Some(s) = ctx.record.as_mut().and_then(|r| r.span.as_mut()) {
            s.upstream_answered(response.status.as_u16());
        }
        if let Err(e) = egress::check_inspectable(&t.api, &response.headers) {
            ctx.refusal = Some(e);
            return Error::e_explain(HTTPStatus(502), "upstream body cannot be masked");
        }
        if let Err(e) = egress::check_declared_size(&t.api, &response.headers) {
            ctx.refusal = Some(e);
            return Error::e_explain(HTTPStatus(502), "upstream body over its cap");
        }
        if t.api.response.redact.proxy_door {
            // The body is redacted whole at its end; its length will change.
            response.remove_header(&http::header::CONTENT_LENGTH);
            response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            ctx.held = Some(Vec::new());
            let redactor = egress::Redactor::for_api(&t.api);
            let mut counts = Default::default();
            let changed: Vec<(http::HeaderName, http::HeaderValue)> = response
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    let text = v.to_str().ok()?;
                    let new = redactor.text(text, &mut counts)?;
                    Some((k.clone(), http::HeaderValue::from_str(&new).ok()?))
                })
                .collect();
            for (k, v) in changed {
                response.insert_header(k, v)?;
            }
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
            .and_then(|loc| {
                let here = t.api.base.url_of(&t.path_and_query)?;
                let (api, endpoint) =
                    outbound::redirect_target(&ctx.gw.config, &t.api, &here, loc)?;
                Some(format!("/{}{endpoint}", api.name))
            });
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
        end_of_stream: bool,
        ctx: &mut Box<ProxyCtx>,
    ) -> Result<Option<std::time::Duration>> {
        if let (Some(t), Some(held)) = (&ctx.target, ctx.held.as_mut()) {
            held.extend_from_slice(body.take().as_deref().unwrap_or_default());
            let cap = t
                .api
                .response
                .proxy_max_bytes
                .unwrap_or(ctx.gw.config.mcp.max_response_bytes);
            if held.len() > cap {
                ctx.refusal = Some(GatewayError::because(
                    crate::error::Reason::UpstreamResponseTooLarge,
                    format!("a body redacted on the proxy door is held whole, up to {cap} bytes; this one is larger"),
                ));
                return Error::e_explain(HTTPStatus(502), "held body over its cap");
            }
            if end_of_stream {
                let whole = Bytes::from(std::mem::take(held));
                *body = Some(egress::redact_whole(&t.api, whole));
            }
            return Ok(None);
        }
        if let (Some(t), Some(r)) = (&ctx.target, ctx.redactor.as_mut()) {
            *body = r.push(&t.api, body.take(), end_of_stream);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<ProxyCtx>,
    ) -> FailToProxy {
        let err = match (e.etype(), &ctx.target) {
            _ if ctx.refusal.is_some() => ctx.refusal.take().expect("checked"),
            // Pingora names it only as a custom type (its constant is private).
            (Custom("InvalidChunk"), _) if e.esource() == &ErrorSource::Downstream => {
                GatewayError::because(
                    crate::error::Reason::MalformedBody,
                    "the request body's chunked encoding is malformed",
                )
            }
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
        // The call record logs the failure; this names Pingora's cause.
        tracing::debug!(error = err.kind.code(), door = "proxy", cause = %e.etype().as_str(), "proxy failure");
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
        ctx: &mut Box<ProxyCtx>,
    ) -> Result<()> {
        if let Some(t) = &ctx.target {
            crate::telemetry::metrics().upstream(
                Door::Proxy,
                &t.api,
                reused,
                Some(t.caller.principal.id.as_str()),
            );
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Box<ProxyCtx>) {
        let Some(mut record) = ctx.record.take() else {
            return;
        };
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.answered.as_ref().map(|e| e.kind.status()))
            .unwrap_or(0);
        record.bytes_in = session.body_bytes_read() as u64;
        record.bytes_out = session.body_bytes_sent() as u64;
        let req = session.req_header();
        let target = || {
            req.uri
                .path_and_query()
                .map_or_else(|| req.uri.path().to_string(), |pq| pq.as_str().to_string())
        };
        record.finish(&ctx.gw, status, ctx.answered.as_ref(), target);
    }
}
