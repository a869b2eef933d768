//! The admin listener: `/healthz` (the process is up), `/readyz` (config loaded, doors
//! serving) and `/metrics` (Prometheus text format); for principals holding `[admin] role`,
//! `POST /explain` and the credential routes (`/credentials/{api}[/{principal}]`); with
//! `[admin] console = true`, the console under `/console/` (see [`console`]).

pub mod console;

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
    console: console::Console,
}

impl AdminApp {
    pub fn new(live: Arc<Live>) -> Self {
        AdminApp {
            live,
            console: console::Console::default(),
        }
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
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !crate::listener::read_head(&mut session).await {
            return None;
        }
        let p = session.req_header().uri.path();
        if p == "/console" || p.starts_with("/console/") {
            if !self
                .console
                .handle(&self.live, &mut session, shutdown)
                .await
            {
                return None;
            }
            return finish(session).await;
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
        if path == "/approvals" || path.starts_with("/approvals/") {
            return self.approvals(session, &gw, path).await;
        }
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
            .and_then(|v| crate::explain::Described::from_json(&v, &gw.surface.load()));
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

impl AdminApp {
    /// `GET /approvals[?status=…]`, `GET /approvals/{id}`, `POST /approvals/{id}` with
    /// `{"approve": bool, "reason": "…"}`: the approval queue, for admins and approvers.
    async fn approvals(
        &self,
        session: &mut ServerSession,
        gw: &crate::gateway::Gateway,
        path: &str,
    ) -> (u16, &'static str, Bytes) {
        use crate::error::{GatewayError, Reason};
        let problem = |e: &GatewayError| {
            (
                e.kind.status(),
                "application/problem+json",
                Bytes::from(e.problem_json().to_string()),
            )
        };
        let json = |status: u16, v: serde_json::Value| {
            (status, "application/json", Bytes::from(v.to_string()))
        };
        let who = match gw
            .pipeline
            .authenticate_principal(&session.req_header().headers)
            .await
        {
            Ok(p) => p,
            Err(e) => return problem(&e),
        };
        let method = session.req_header().method.clone();
        let id = path.strip_prefix("/approvals/").filter(|s| !s.is_empty());
        match (&method, id) {
            (&http::Method::GET, None) => {
                if !gw.pipeline.sees_approvals(&who) {
                    return problem(&GatewayError::because(
                        Reason::NotPermitted,
                        "the approval queue is for admins and approvers",
                    ));
                }
                let query = session.req_header().uri.query().unwrap_or("").to_string();
                let status = url::form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == "status")
                    .map(|(_, v)| v.into_owned());
                let status = match status.as_deref().map(crate::approvals::Status::parse) {
                    None => None,
                    Some(Some(s)) => Some(s),
                    Some(None) => {
                        return problem(&GatewayError::invalid_arguments(
                            "status is one of pending, approved, denied, expired, consumed",
                        ))
                    }
                };
                match gw.pipeline.approval_records(status).await {
                    Ok(list) => json(
                        200,
                        serde_json::Value::Array(list.iter().map(|r| r.json()).collect()),
                    ),
                    Err(e) => problem(&e),
                }
            }
            (&http::Method::GET, Some(id)) => match gw.pipeline.approval_record(id).await {
                Ok(Some(r)) if gw.pipeline.sees_approvals(&who) || r.principal == who.id => {
                    json(200, r.json())
                }
                Ok(Some(_)) => problem(&GatewayError::because(
                    Reason::NotPermitted,
                    "this approval is for admins, approvers and its requester",
                )),
                Ok(None) => json(404, serde_json::json!({"error": "not_found"})),
                Err(e) => problem(&e),
            },
            (&http::Method::POST, Some(id)) => {
                let body = match read_body(session, 16 << 10).await {
                    Ok(b) => b,
                    Err(e) => return problem(&e),
                };
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let Some(approve) = v.get("approve").and_then(serde_json::Value::as_bool) else {
                    return problem(&GatewayError::invalid_arguments(
                        "send {\"approve\": true|false, \"reason\": \"…\"}",
                    ));
                };
                let reason = v
                    .get("reason")
                    .and_then(serde_json::Value::as_str)
                    .map(|r| r.chars().take(500).collect());
                match gw
                    .pipeline
                    .decide_approval(id, approve, &who, reason, "admin")
                    .await
                {
                    Ok(r) => json(200, r.json()),
                    Err(e) => problem(&e),
                }
            }
            _ => problem(&GatewayError::because(
                Reason::MethodNotAllowed,
                "GET /approvals[?status=pending], GET or POST /approvals/{id}",
            )),
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
