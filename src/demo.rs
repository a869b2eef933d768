//! The built-in demo upstream (`[demo] listen`, on loopback only): a tiny HTTP API that
//! answers every request with what it received, as JSON, so the embedded default config can
//! be tried with nothing else running. No other config turns it on.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde_json::{json, Map, Value};

/// The most request body the demo reads.
const MAX_BODY: usize = 64 * 1024;

/// Headers the demo echoes: enough to see what the gateway forwards (and that it injected a
/// credential), nothing more.
const ECHOED: &[&str] = &[
    "accept",
    "authorization",
    "content-type",
    "traceparent",
    "user-agent",
    "x-api-key",
];

/// Answers `{"demo": true, "method", "path", "query", "headers", "body"}`.
pub struct DemoUpstream;

#[async_trait]
impl HttpServerApp for DemoUpstream {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !crate::listener::read_head(&mut session).await {
            return None;
        }
        let mut body = Vec::new();
        loop {
            let chunk = match session.read_request_body().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(_) => {
                    let b =
                        Bytes::from_static(b"{\"error\":\"the request body could not be read\"}");
                    crate::admin::respond(&mut session, 400, "application/json", b).await;
                    return None;
                }
            };
            if body.len() + chunk.len() > MAX_BODY {
                let b =
                    Bytes::from_static(b"{\"error\":\"the demo upstream reads at most 64 KiB\"}");
                crate::admin::respond(&mut session, 413, "application/json", b).await;
                return None;
            }
            body.extend_from_slice(&chunk);
        }
        let req = session.req_header();
        let query: Map<String, Value> =
            url::form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect();
        let headers: Map<String, Value> = ECHOED
            .iter()
            .filter_map(|h| {
                let v = req.headers.get(*h)?.to_str().ok()?;
                // A credential is shown by its length, never its value.
                let shown = if matches!(*h, "authorization" | "x-api-key") {
                    format!("<{} characters>", v.len())
                } else {
                    v.to_string()
                };
                Some((h.to_string(), Value::String(shown)))
            })
            .collect();
        let body = match serde_json::from_slice::<Value>(&body) {
            _ if body.is_empty() => Value::Null,
            Ok(v) => v,
            Err(_) => Value::String(String::from_utf8_lossy(&body).into_owned()),
        };
        let answer = json!({
            "demo": true,
            "message": "Hello from the gateway's built-in demo upstream: this is what it received.",
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "query": query,
            "headers": headers,
            "body": body,
        });
        let out = Bytes::from(answer.to_string());
        if !crate::admin::respond(&mut session, 200, "application/json", out).await {
            return None;
        }
        crate::admin::finish(session).await
    }
}
