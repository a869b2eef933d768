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
        let (status, body) = match session.req_header().uri.path() {
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
