//! The admin listener: `/healthz` (the process is up), `/readyz` (config loaded, doors
//! serving) and `/metrics` (Prometheus text format).

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
        let route_exists = matches!(path, "/explain");
        if !route_exists {
            return (
                404,
                "application/json",
                Bytes::from_static(b"{\"error\":\"not_found\"}"),
            );
        }
        if let Err(e) = gw
            .pipeline
            .authenticate_admin(&session.req_header().headers)
            .await
        {
            return problem(&e);
        }
        if session.req_header().method != http::Method::POST {
            let e = crate::error::GatewayError::because(
                crate::error::Reason::MethodNotAllowed,
                "POST a call description to /explain",
            );
            return problem(&e);
        }
        // The description is small: at most 64 KiB is read.
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= 64 << 10 => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    session.set_keepalive(None);
                    return problem(&crate::error::GatewayError::payload_too_large(
                        "a call description may be at most 64 KiB",
                    ));
                }
                Ok(None) => break,
                Err(_) => {
                    session.set_keepalive(None);
                    return problem(&crate::error::GatewayError::invalid_arguments(
                        "the request body could not be read",
                    ));
                }
            }
        }
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
