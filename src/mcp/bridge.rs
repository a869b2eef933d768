//! The Pingora↔tower bridge of the MCP door: a Pingora HTTP app that identifies the caller,
//! guards legacy sessions, and hands `/mcp` requests to rmcp's Streamable HTTP service.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use pingora::apps::{HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::fast::FastPath;
use super::handler::GatewayMcp;
use crate::error::GatewayError;
use crate::gateway::{Gateway, Live};
use crate::policy::{Caller, CallerRequest, Door};

/// rmcp's Streamable HTTP service over the gateway's tools, as `[mcp]` configures it. It
/// expects each request to carry its identified [`Caller`] in the request extensions.
pub fn http_service(
    live: Arc<Live>,
    cancel: CancellationToken,
) -> StreamableHttpService<GatewayMcp, LocalSessionManager> {
    let sessions = session_manager(&live.current().config.mcp);
    http_service_with(live, cancel, sessions)
}

/// The legacy-session store, with `[mcp] session_idle_timeout`.
fn session_manager(cfg: &crate::config::McpConfig) -> Arc<LocalSessionManager> {
    let mut m = LocalSessionManager::default();
    m.session_config.keep_alive = Some(cfg.session_idle_timeout);
    Arc::new(m)
}

/// [`http_service`] over a given session store.
fn http_service_with(
    live: Arc<Live>,
    cancel: CancellationToken,
    sessions: Arc<LocalSessionManager>,
) -> StreamableHttpService<GatewayMcp, LocalSessionManager> {
    let gateway = live.current();
    let cfg = &gateway.config.mcp;
    let http_cfg = StreamableHttpServerConfig::default()
        // Host and Origin are judged by the admission pipeline (stage 2) before rmcp sees
        // the request; rmcp checks the Host list again, and leaves Origin to that stage.
        .with_allowed_hosts(cfg.browser.allowed_hosts.clone())
        .with_legacy_session_mode(cfg.legacy_sessions)
        .with_json_response(cfg.json_response)
        .with_max_request_body_bytes(cfg.max_request_bytes)
        .with_cancellation_token(cancel);
    // Each request or session gets a handler on the config serving then (requests still
    // take their own snapshot, see `GatewayMcp::at`); the factory keeps no config alive.
    StreamableHttpService::new(
        move || Ok(GatewayMcp::new(live.clone())),
        sessions,
        http_cfg,
    )
}

/// The Pingora service app that bridges HTTP sessions to rmcp's Streamable HTTP service.
pub struct McpHttpApp {
    service: StreamableHttpService<GatewayMcp, LocalSessionManager>,
    max_request_bytes: usize,
    live: Arc<Live>,
    /// Which principal created each legacy session: a session id is usable only by it, so a
    /// leaked id cannot be used (for instance to read its event stream) by another caller.
    owners: std::sync::Mutex<SessionOwners>,
    /// The live legacy sessions (a session leaves when it closes or idles out).
    sessions: Arc<LocalSessionManager>,
    /// The fast path for stateless `tools/call`.
    fast: FastPath,
}

/// Session id → principal id, bounded: the oldest entries go first.
#[derive(Default)]
struct SessionOwners {
    by_id: std::collections::HashMap<String, String>,
    order: std::collections::VecDeque<String>,
}

const MAX_TRACKED_SESSIONS: usize = 100_000;

impl SessionOwners {
    fn insert(&mut self, session: String, principal: String) {
        if self.by_id.insert(session.clone(), principal).is_none() {
            self.order.push_back(session);
        }
        while self.order.len() > MAX_TRACKED_SESSIONS {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }
}

fn host_of(session: &ServerSession) -> Option<&str> {
    session
        .req_header()
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
}

impl McpHttpApp {
    pub fn new(live: Arc<Live>, cancel: CancellationToken) -> Self {
        let sessions = session_manager(&live.current().config.mcp);
        McpHttpApp {
            service: http_service_with(live.clone(), cancel, sessions.clone()),
            max_request_bytes: live.current().config.mcp.max_request_bytes,
            fast: FastPath::new(live.clone()),
            live,
            owners: std::sync::Mutex::new(SessionOwners::default()),
            sessions,
        }
    }

    /// Why a caller may not open another legacy session now, if it may not: the gateway holds
    /// `mcp.max_sessions`, or the caller `mcp.max_sessions_per_caller`, live sessions.
    async fn session_limit(
        &self,
        cfg: &crate::config::McpConfig,
        principal: &str,
    ) -> Option<GatewayError> {
        let live = self.sessions.sessions.read().await;
        let full = |message: String| {
            Some(GatewayError::because(
                crate::error::Reason::SessionLimit,
                message,
            ))
        };
        if live.len() >= cfg.max_sessions {
            return full(format!(
                "the gateway holds {} MCP sessions (mcp.max_sessions); retry when one closes, \
                 or use stateless requests",
                live.len()
            ));
        }
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        // Sessions that closed or idled out no longer count (nor are they kept).
        owners.by_id.retain(|id, _| live.contains_key(id.as_str()));
        let SessionOwners { by_id, order } = &mut *owners;
        order.retain(|id| by_id.contains_key(id));
        let held = owners.by_id.values().filter(|p| *p == principal).count();
        if held >= cfg.max_sessions_per_caller {
            return full(format!(
                "you hold {held} MCP sessions (mcp.max_sessions_per_caller); close one with \
                 DELETE /mcp, or let one idle out (mcp.session_idle_timeout)"
            ));
        }
        None
    }

    /// Writes a gateway error as problem+json; a 401 carries `WWW-Authenticate` pointing at
    /// the protected-resource metadata on this listener.
    async fn respond_error(gw: &Gateway, session: &mut ServerSession, e: &GatewayError) {
        let Ok((h, body)) = crate::call::problem(&gw.config, e, host_of(session)) else {
            return;
        };
        let _ = session.write_response_header(Box::new(h)).await;
        let _ = session.write_response_body(body, true).await;
    }

    /// Refuses an HTTP request before it reaches rmcp: logged, counted, audited, and
    /// answered as problem+json (with `WWW-Authenticate` on a 401).
    ///
    /// Callers box this, the connect page and `/me/credentials`: their futures are large and
    /// rare, and inline they would make every request's future (moved whole onto the heap
    /// per request) as large.
    async fn refuse(
        gw: &Gateway,
        mut session: ServerSession,
        caller: Option<&Caller>,
        e: &GatewayError,
    ) -> Option<ReusedHttpStream> {
        let head = session.req_header();
        let mut event =
            crate::audit::AuditEvent::new(Door::Mcp, caller, head.method.as_str(), head.uri.path());
        event.failed(e);
        crate::call::log_refusal(&crate::call::LogLine {
            request_id: &event.request_id,
            door: Door::Mcp,
            api: "none",
            method: head.method.as_str(),
            path: head.uri.path(),
            principal: caller.map_or("unidentified", |c| c.principal.id.as_str()),
            status: e.kind.status(),
            error: e,
        });
        crate::telemetry::metrics().refusal(Door::Mcp, None, e);
        gw.audit(|| event);
        Self::respond_error(gw, &mut session, e).await;
        crate::admin::finish(session).await
    }

    /// RFC 9728 metadata, at the well-known path and at its `/mcp`-suffixed form.
    async fn respond_metadata(gw: &Gateway, session: &mut ServerSession) {
        let body = crate::auth::resource_metadata(&gw.config, host_of(session)).to_string();
        let Ok(mut h) = ResponseHeader::build(200, Some(3)) else {
            return;
        };
        let _ = h.insert_header(http::header::CONTENT_TYPE, "application/json");
        let _ = h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
        let _ = h.insert_header(http::header::CACHE_CONTROL, "max-age=300");
        let _ = session.write_response_header(Box::new(h)).await;
        let _ = session.write_response_body(Bytes::from(body), true).await;
    }

    /// Stages 1–4 of admission for a request on this listener, from its head.
    async fn identify(
        gw: &Gateway,
        session: &ServerSession,
    ) -> Result<crate::auth::Caller, GatewayError> {
        let head = session.req_header();
        let raw_head = session.as_http1().map(|h1| h1.get_headers_raw_bytes());
        gw.pipeline
            .identify(&CallerRequest {
                door: Door::Mcp,
                peer: session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip()),
                method: &head.method,
                path: head.uri.path(),
                query: head.uri.query().unwrap_or(""),
                headers: &head.headers,
                raw_head: raw_head.as_deref(),
                body: None,
                trace: crate::trace::TraceContext::from_headers(&head.headers),
            })
            .await
    }

    /// The connect page and the OAuth callback: opened in the user's browser, which holds
    /// no credential of the gateway's; the sealed link (or OAuth `state`) is the authority.
    async fn serve_connect(
        gw: &Gateway,
        mut session: ServerSession,
        path: &str,
    ) -> Option<ReusedHttpStream> {
        let method = session.req_header().method.clone();
        let query = session.req_header().uri.query().unwrap_or("").to_string();
        let cookies = session
            .req_header()
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("; ");
        let origin = session
            .req_header()
            .headers
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let reply = match crate::admin::read_body(&mut session, 64 << 10).await {
            Err(e) => crate::credentials::Reply::problem(&e),
            Ok(_) if path == "/oauth/callback" && method != http::Method::GET => {
                crate::credentials::Reply::problem(&GatewayError::because(
                    crate::error::Reason::MethodNotAllowed,
                    "the OAuth callback is a GET",
                ))
            }
            Ok(_) if path == "/oauth/callback" => {
                crate::credentials::callback(gw, path, &query, &cookies).await
            }
            Ok(body) => {
                crate::credentials::connect(gw, &method, path, &query, origin.as_deref(), &body)
                    .await
            }
        };
        if !reply.write(&mut session).await {
            return None;
        }
        crate::admin::finish(session).await
    }

    /// `/me/credentials[/{api}]`: the caller manages its own credentials, authenticated as
    /// on the MCP door.
    async fn serve_self(
        gw: &Gateway,
        mut session: ServerSession,
        path: &str,
        api: Option<String>,
    ) -> Option<ReusedHttpStream> {
        let identified = Self::identify(gw, &session).await;
        let caller = match identified {
            Ok(c) => c,
            Err(e) => {
                session.set_keepalive(None);
                return Box::pin(Self::refuse(gw, session, None, &e)).await;
            }
        };
        let method = session.req_header().method.clone();
        let reply = match crate::admin::read_body(&mut session, 64 << 10).await {
            Err(e) => crate::credentials::Reply::problem(&e),
            Ok(body) => {
                let id = caller.principal.id.clone();
                crate::credentials::manage(
                    gw,
                    "mcp",
                    Some(&caller),
                    &id,
                    &method,
                    path,
                    api.as_deref(),
                    Some(&id),
                    &body,
                )
                .await
            }
        };
        if !reply.write(&mut session).await {
            return None;
        }
        crate::admin::finish(session).await
    }

    async fn respond_json(session: &mut ServerSession, status: u16, body: String) {
        if let Ok(mut h) = ResponseHeader::build(status, Some(2)) {
            let _ = h.insert_header(http::header::CONTENT_TYPE, "application/json");
            let _ = h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
            let _ = session.write_response_header(Box::new(h)).await;
            let _ = session.write_response_body(Bytes::from(body), true).await;
        }
    }

    async fn respond_plain(session: &mut ServerSession, status: u16, body: &'static str) {
        if let Ok(mut h) = ResponseHeader::build(status, Some(2)) {
            let _ = h.insert_header(http::header::CONTENT_TYPE, "text/plain");
            let _ = h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
            let _ = session.write_response_header(Box::new(h)).await;
            let _ = session
                .write_response_body(Bytes::from_static(body.as_bytes()), true)
                .await;
        }
    }
}

#[async_trait]
impl HttpServerApp for McpHttpApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !crate::listener::read_head(&mut session).await {
            return None;
        }
        // This request is served on the config that is current now, to its end, and a
        // graceful shutdown waits for it.
        let _in_flight = self.live.enter();
        let gw = self.live.current();
        let path = session.req_header().uri.path().to_string();
        if path == crate::auth::METADATA_PATH
            || path == format!("{}/mcp", crate::auth::METADATA_PATH)
        {
            Self::respond_metadata(&gw, &mut session).await;
            return crate::admin::finish(session).await;
        }
        if path == "/oauth/callback" || path.starts_with("/connect/") {
            return Box::pin(Self::serve_connect(&gw, session, &path)).await;
        }
        if let Some(api) = crate::credentials::self_route(&path) {
            return Box::pin(Self::serve_self(&gw, session, &path, api)).await;
        }
        if path != "/mcp" && path != "/mcp/" {
            Self::respond_plain(&mut session, 404, "not found: the MCP endpoint is /mcp\n").await;
            return crate::admin::finish(session).await;
        }

        // Who is calling is decided from the head: a refused caller's body is never read
        // (the connection is closed instead of drained).
        let identified = Self::identify(&gw, &session).await;
        let caller = match identified {
            Ok(c) => Arc::new(c),
            Err(e) => {
                session.set_keepalive(None);
                return Box::pin(Self::refuse(&gw, session, None, &e)).await;
            }
        };

        // Read the body, capped, before handing the request to rmcp.
        let mut body = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_request_bytes {
                        let e = GatewayError::payload_too_large(format!(
                            "an MCP request body may be at most {} bytes (mcp.max_request_bytes)",
                            self.max_request_bytes
                        ));
                        // The rest of the body is not read: the connection is not reused.
                        session.set_keepalive(None);
                        return Box::pin(Self::refuse(&gw, session, Some(&caller), &e)).await;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => return None,
            }
        }
        let body = body.freeze();
        if let Err(e) = crate::policy::body::check_signed_body(&caller, &body) {
            return Box::pin(Self::refuse(&gw, session, Some(&caller), &e)).await;
        }
        let head = session.req_header();
        let session_id = head
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let not_owned = session_id.as_ref().is_some_and(|id| {
            self.owners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .by_id
                .get(id)
                .is_some_and(|owner| *owner != caller.principal.id)
        });
        if not_owned {
            let e = GatewayError::forbidden("this MCP session belongs to another caller")
                .with_reason(crate::error::Reason::SessionNotOwned);
            return Box::pin(Self::refuse(&gw, session, Some(&caller), &e)).await;
        }
        // A request that may open a legacy session (no session id, and not a 2026-07-28
        // stateless request, which names its method in Mcp-Method) is refused while the caller,
        // or the gateway, holds as many sessions as allowed.
        let may_open = session_id.is_none()
            && head.method == http::Method::POST
            && gw.config.mcp.legacy_sessions
            && head
                .headers
                .get("mcp-method")
                .is_none_or(|m| m.as_bytes() == b"initialize");
        if may_open {
            if let Some(e) = self
                .session_limit(&gw.config.mcp, &caller.principal.id)
                .await
            {
                return Box::pin(Self::refuse(&gw, session, Some(&caller), &e)).await;
            }
        }
        let principal_id = caller.principal.id.clone();
        let closing = head.method == http::Method::DELETE;

        // A stateless tools/call of the common shape takes the fast path; the rest, and
        // whatever that path declines, rmcp's transport. Both are boxed: their futures are
        // large, and this one is moved whole onto the heap for every request.
        let fast = if FastPath::may_take(&gw.config.mcp, head) {
            Box::pin(self.fast.serve(&gw, &caller, head, &body)).await
        } else {
            None
        };
        let response = match fast {
            Some(response) => response,
            None => {
                let mut builder = http::Request::builder()
                    .method(head.method.clone())
                    .uri(head.uri.clone());
                for (k, v) in head.headers.iter() {
                    builder = builder.header(k, v);
                }
                let Ok(mut request) = builder.body(Full::new(body.clone())) else {
                    Self::respond_plain(&mut session, 400, "malformed request\n").await;
                    return None;
                };
                request.extensions_mut().insert(caller);
                request.extensions_mut().insert(gw.clone());
                // Served by reference (a clone per request copied the transport's config).
                Box::pin(self.service.handle(request)).await
            }
        };
        // The transport refuses what it cannot read as one message with 415 and a text body;
        // a JSON body gets the JSON-RPC error it deserves instead (checked only then, so a
        // well-formed request is parsed once).
        if response.status() == http::StatusCode::UNSUPPORTED_MEDIA_TYPE {
            if let Some(reply) = malformed_json_rpc(session.req_header(), &body) {
                Self::respond_json(&mut session, 400, reply).await;
                return crate::admin::finish(session).await;
            }
        }
        {
            let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(created) = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
            {
                if session_id.is_none() {
                    owners.insert(created.to_string(), principal_id);
                }
            }
            if closing && response.status().is_success() {
                if let Some(id) = &session_id {
                    owners.by_id.remove(id);
                    owners.order.retain(|x| x != id);
                }
            }
        }
        let (parts, mut body) = response.into_parts();
        let mut header = ResponseHeader::from(parts);
        // A body of known size (a JSON reply) gets its Content-Length: header and body then
        // leave in one write.
        if let (None, Some(n)) = (
            header.headers.get(http::header::CONTENT_LENGTH),
            http_body::Body::size_hint(&body).exact(),
        ) {
            let _ = header.insert_header(http::header::CONTENT_LENGTH, n.to_string());
        }
        let streaming = header.headers.get(http::header::CONTENT_LENGTH).is_none();
        if streaming {
            // Chunked, so the body's end is marked and the connection stays open for the
            // next request (without it the body would run until the connection closes).
            let _ = header.insert_header(http::header::TRANSFER_ENCODING, "chunked");
        }
        if session
            .write_response_header(Box::new(header))
            .await
            .is_err()
        {
            return None;
        }
        let mut shutdown = shutdown.clone();
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = shutdown.changed() => {
                    let _ = session.write_response_body(Bytes::new(), true).await;
                    return None;
                }
            };
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if session.write_response_body(data, false).await.is_err() {
                            return None;
                        }
                    }
                }
                Some(Err(_)) => return None,
                None => break,
            }
        }
        if session
            .write_response_body(Bytes::new(), true)
            .await
            .is_err()
        {
            return None;
        }
        crate::admin::finish(session).await
    }
}

/// A JSON POST that is not one JSON-RPC 2.0 message gets the JSON-RPC error it deserves, with
/// HTTP 400: `-32700` for text that is not JSON (or nests deeper than 128 levels), `-32600`
/// for a batch (removed from MCP in 2025-06-18) or a message that is not JSON-RPC 2.0. Other
/// requests go on to the transport, which answers wrong content types itself.
fn malformed_json_rpc(head: &pingora::http::RequestHeader, body: &[u8]) -> Option<String> {
    let json = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if head.method != http::Method::POST || !json {
        return None;
    }
    let error = |id: Value, code: i64, message: &str| {
        Some(
            serde_json::json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {"code": code, "message": message},
            })
            .to_string(),
        )
    };
    match serde_json::from_slice::<Value>(body) {
        Err(e) => error(Value::Null, -32700, &format!("parse error: {e}")),
        Ok(Value::Array(_)) => error(
            Value::Null,
            -32600,
            "JSON-RPC batches are not supported; send one message per request",
        ),
        Ok(Value::Object(m)) if m.get("jsonrpc").and_then(Value::as_str) == Some("2.0") => None,
        Ok(m) => error(
            m.get("id").cloned().unwrap_or(Value::Null),
            -32600,
            "not a JSON-RPC 2.0 message: \"jsonrpc\" must be \"2.0\"",
        ),
    }
}
