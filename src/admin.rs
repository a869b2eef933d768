//! The admin listener: `/healthz` (the process is up), `/readyz` (config loaded, doors
//! serving) and `/metrics` (Prometheus text format); for principals holding `[admin] role`,
//! `POST /explain` and the credential routes (`/credentials/{api}[/{principal}]`).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;

use crate::gateway::Live;

/// Serves the health endpoints.
pub struct AdminApp {
    live: Arc<Live>,
}

impl AdminApp {
    pub fn new(live: Arc<Live>) -> Self {
        AdminApp { live }
    }
}

/// Writes a small complete response.
pub async fn respond(
    session: &mut ServerSession,
    status: u16,
    content_type: &str,
    body: Bytes,
) -> bool {
    let Ok(mut h) = ResponseHeader::build(status, Some(3)) else {
        return false;
    };
    let ok = h
        .insert_header(http::header::CONTENT_TYPE, content_type)
        .is_ok()
        && h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())
            .is_ok()
        && h.insert_header(http::header::CACHE_CONTROL, "no-store")
            .is_ok();
    ok && session.write_response_header(Box::new(h)).await.is_ok()
        && session.write_response_body(body, true).await.is_ok()
}

#[async_trait]
impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !crate::listener::read_head(&mut session).await {
            return None;
        }
        if session.req_header().uri.path() == "/metrics" {
            let body = Bytes::from(crate::telemetry::metrics().render());
            let ct = "text/plain; version=0.0.4; charset=utf-8";
            if !respond(&mut session, 200, ct, body).await {
                return None;
            }
            return finish(session).await;
        }
        let path = session.req_header().uri.path().to_string();
        if !matches!(path.as_str(), "/healthz" | "/readyz") {
            let (status, ct, body) = self.guarded(&mut session, &path).await;
            if !respond(&mut session, status, ct, body).await {
                return None;
            }
            return finish(session).await;
        }
        let (status, body) = match path.as_str() {
            "/healthz" => (200, "{\"status\":\"ok\"}".to_string()),
            "/readyz" if !self.live.ready() => (503, "{\"status\":\"draining\"}".to_string()),
            "/readyz" => (
                200,
                format!(
                    "{{\"status\":\"ready\",\"apis\":{}}}",
                    self.live.current().config.apis.len()
                ),
            ),
            _ => (404, "{\"error\":\"not_found\"}".to_string()),
        };
        if !respond(&mut session, status, "application/json", Bytes::from(body)).await {
            return None;
        }
        finish(session).await
    }
}

impl AdminApp {
    /// Every route beyond health and metrics: the caller must be an admin
    /// ([`crate::policy::Pipeline::authenticate_admin`]), then the route runs.
    async fn guarded(&self, session: &mut ServerSession, path: &str) -> (u16, &'static str, Bytes) {
        let gw = self.live.current();
        let problem = |e: &crate::error::GatewayError| {
            (
                e.kind.status(),
                "application/problem+json",
                Bytes::from(e.problem_json().to_string()),
            )
        };
        let credentials = crate::credentials::admin_route(path);
        let route_exists = path == "/explain" || credentials.is_some();
        if !route_exists {
            return (
                404,
                "application/json",
                Bytes::from_static(b"{\"error\":\"not_found\"}"),
            );
        }
        let admin = match gw
            .pipeline
            .authenticate_admin(&session.req_header().headers)
            .await
        {
            Ok(p) => p,
            Err(e) => return problem(&e),
        };
        if let Some((api, principal)) = credentials {
            let body = match read_body(session, 64 << 10).await {
                Ok(b) => b,
                Err(e) => return problem(&e),
            };
            let method = session.req_header().method.clone();
            let r = crate::credentials::manage(
                &gw,
                "admin",
                None,
                &admin.id,
                &method,
                path,
                api.as_deref(),
                principal.as_deref(),
                &body,
            )
            .await;
            return (r.status, r.content_type, r.body);
        }
        if session.req_header().method != http::Method::POST {
            let e = crate::error::GatewayError::because(
                crate::error::Reason::MethodNotAllowed,
                "POST a call description to /explain",
            );
            return problem(&e);
        }
        // The description is small: at most 64 KiB is read.
        let body = match read_body(session, 64 << 10).await {
            Ok(b) => b,
            Err(e) => return problem(&e),
        };
        let described = serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|e| e.to_string())
            .and_then(|v| crate::explain::Described::from_json(&v));
        let described = match described {
            Ok(d) => d,
            Err(e) => {
                return problem(&crate::error::GatewayError::invalid_arguments(format!(
                    "not a call description: {e}"
                )))
            }
        };
        match crate::explain::explain_with(&gw.pipeline, &described).await {
            Ok(doc) => (200, "application/json", Bytes::from(doc.to_string())),
            Err(e) => problem(&crate::error::GatewayError::invalid_arguments(e)),
        }
    }
}

/// Reads a small request body whole: at most `max` bytes, else 413 (and the connection is
/// not reused, its rest unread).
pub async fn read_body(
    session: &mut ServerSession,
    max: usize,
) -> Result<Vec<u8>, crate::error::GatewayError> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= max => body.extend_from_slice(&chunk),
            Ok(Some(_)) => {
                session.set_keepalive(None);
                return Err(crate::error::GatewayError::payload_too_large(format!(
                    "the request body may be at most {} KiB",
                    max >> 10
                )));
            }
            Ok(None) => return Ok(body),
            Err(_) => {
                session.set_keepalive(None);
                return Err(crate::error::GatewayError::invalid_arguments(
                    "the request body could not be read",
                ));
            }
        }
    }
}

/// Ends a served request and hands the connection back for keep-alive when possible.
pub async fn finish(session: ServerSession) -> Option<ReusedHttpStream> {
    let settings = HttpPersistentSettings::for_session(&session);
    session
        .finish()
        .await
        .ok()
        .flatten()
        .map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
}
