//! The fast path for a stateless (2026-07-28) `tools/call`: one JSON document in, one out.
//!
//! rmcp's Streamable HTTP transport serves such a request by building an HTTP request, running
//! a service loop for it (a peer, channels, two spawned tasks) and serialising the message a
//! second time to check its headers. For the common shape of a tool call this module does
//! what that machinery amounts to, and nothing else: it parses the body as rmcp does, checks
//! what rmcp's transport would check, calls the same handler through rmcp's own dispatch
//! (`Service::handle_request`, which validates the request's `_meta` and guards task
//! results), and writes the reply as rmcp's `json_response` mode does.
//!
//! The shape: no session, no `Origin`, one `Host` on the MCP listener's list, version
//! 2026-07-28 in the header and in a `_meta` with every key that version requires, no
//! progress token, `Mcp-Method: tools/call` and a plain `Mcp-Name` naming the body's tool,
//! `Accept` and `Content-Type` without parameters, a tool whose schema has no `x-mcp-header`
//! annotation, and `[mcp] json_response` on. Anything else is left to rmcp, so every refusal
//! of the transport is rmcp's own. `tests/mcp_fast_path.rs` runs the same requests through
//! both and compares the answers byte for byte; `[mcp] stateless_fast_path = false` turns
//! this path off, and `api_mcp_fast_path_requests_total` counts what it serves.
//!
//! Two differences remain, both where something has already gone wrong: a handler that
//! panics closes the connection (under rmcp the request hangs until shutdown), and a handler
//! that sent a notification before its reply would have it dropped (rmcp would stream it
//! first). The gateway's handler sends none during a stateless call, and a request that asks
//! for progress (a progress token) is left to rmcp.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use pingora::http::RequestHeader;
use rmcp::model::{
    CallToolRequest, ClientCapabilities, ClientRequest, ErrorCode, GetExtensions, GetMeta,
    Implementation, InitializeRequestParams, JsonRpcVersion2_0, ProtocolVersion, RequestId,
    ServerJsonRpcMessage,
};
use rmcp::service::{Peer, RequestContext, RoleServer, Service};
use serde::Deserialize;

use super::handler::GatewayMcp;
use crate::gateway::{Gateway, Live};
use crate::policy::Caller;

/// rmcp's answer type, so both paths hand the bridge the same thing to write.
pub(super) type Reply = http::Response<BoxBody<Bytes, Infallible>>;

/// The fast path: the live config, and a peer for the handler's request context.
pub(super) struct FastPath {
    live: Arc<Live>,
    /// The handler's peer. On this path the reply is the only channel back, so the peer is
    /// connected to nothing (what it would send is dropped; see the module's notes); it
    /// carries the handshake info rmcp gives a 2026-07-28 stateless request (the version,
    /// default capabilities and client). Made on the first request, inside the runtime that
    /// serves it.
    peer: OnceLock<Peer<RoleServer>>,
}

impl FastPath {
    pub(super) fn new(live: Arc<Live>) -> Self {
        FastPath {
            live,
            peer: OnceLock::new(),
        }
    }

    fn peer(&self) -> Peer<RoleServer> {
        self.peer
            .get_or_init(|| {
                let info = InitializeRequestParams::new(
                    ClientCapabilities::default(),
                    Implementation::default(),
                )
                .with_protocol_version(ProtocolVersion::V_2026_07_28);
                // No transport: the loop ends at once, and the peer stays as a value.
                rmcp::service::serve_directly(
                    GatewayMcp::new(self.live.clone()),
                    (tokio::io::empty(), tokio::io::sink()),
                    Some(info),
                )
                .peer()
                .clone()
            })
            .clone()
    }

    /// Whether a request with this head may take the fast path: cheap, so the rest of the
    /// path (and its future) is only set up for requests that can take it.
    pub(super) fn may_take(cfg: &crate::config::McpConfig, head: &RequestHeader) -> bool {
        cfg.stateless_fast_path
            && cfg.json_response
            && head.method == http::Method::POST
            && head_is_plain(&head.headers, &cfg.browser.allowed_hosts)
    }

    /// The reply to a stateless `tools/call` whose head [`FastPath::may_take`], or `None`
    /// when its body is not one this path takes (rmcp then serves it, and answers whatever is
    /// wrong with it). Once the handler has run the answer is always this path's.
    pub(super) async fn serve(
        &self,
        gw: &Arc<Gateway>,
        caller: &Arc<Caller>,
        head: &RequestHeader,
        body: &[u8],
    ) -> Option<Reply> {
        // Read as rmcp's transport reads a request whose method is `tools/call` (see
        // [`typed_call`]), so the request the handler sees is the same.
        let (id, call) = typed_call(body)?;
        // `Mcp-Name` must name the body's tool as written (a Base64 form goes to rmcp).
        let name = call.params.name.clone();
        if single(&head.headers, "mcp-name") != Some(name.as_ref()) || name.starts_with("=?") {
            return None;
        }
        let mut request = ClientRequest::CallToolRequest(call);
        // The body's version must be the header's, with every `_meta` key 2026-07-28
        // requires: rmcp then routes the request to its stateless path and lets it through.
        let meta = request.get_meta();
        if meta.protocol_version() != Some(ProtocolVersion::V_2026_07_28)
            || !meta
                .missing_required_keys(&ProtocolVersion::V_2026_07_28)
                .is_empty()
            || meta.get_progress_token().is_some()
        {
            return None;
        }

        // Last, as it looks the tool up: its schema must map no argument to an `Mcp-Param-*`
        // header, which rmcp would check.
        let handler = GatewayMcp::new(self.live.clone());
        if rmcp::ServerHandler::get_tool(&handler, &name)
            .is_some_and(|t| t.input_schema.iter().any(|(k, v)| maps_headers(k, v)))
        {
            return None;
        }

        // As rmcp's service loop dispatches a request: `_meta` and the extensions move into
        // the context, the caller and the config snapshot ride in the extensions.
        let mut context = RequestContext::new(id.clone(), self.peer());
        context.meta = std::mem::take(request.get_meta_mut());
        context.extensions = std::mem::take(request.extensions_mut());
        context.extensions.insert(caller.clone());
        context.extensions.insert(gw.clone());
        let answered = Box::pin(Service::<RoleServer>::handle_request(
            &handler, request, context,
        ))
        .await;
        crate::telemetry::metrics().mcp_fast_path.inc();
        let message = match answered {
            Ok(result) => ServerJsonRpcMessage::response(result, id),
            Err(error) => {
                // The line rmcp's service loop logs for an error reply, under its target, so
                // a log filter sees the same on both paths.
                tracing::warn!(target: "rmcp::service", %id, ?error, "response error");
                ServerJsonRpcMessage::error(error, Some(id))
            }
        };
        Some(reply(&message))
    }
}

/// A `tools/call` request read from its body as rmcp's transport reads it, or `None` for
/// any body it would read otherwise (or refuse).
///
/// rmcp reads a message through serde's untagged enums: the message kind by which members
/// are present (a request has `method` and `id` and neither `result` nor `error`), then each
/// request type in turn until one parses, building and dropping an error for each of the 13
/// that come before `tools/call`. This reads the members once and hands `method` and
/// `params` to rmcp's own `CallToolRequest` (so `_meta` and the parameters come out as rmcp
/// makes them); a body with a member twice, a `result` or an `error`, or a request that is
/// no well-formed `tools/call` (rmcp would then read it as a custom request) goes to rmcp.
fn typed_call(body: &[u8]) -> Option<(RequestId, CallToolRequest)> {
    use serde::de::{Error, IgnoredAny, MapAccess, Visitor};
    use serde::Deserializer;
    use serde_json::value::RawValue;

    #[derive(Default)]
    struct Members<'a> {
        jsonrpc: bool,
        id: Option<RequestId>,
        method: Option<&'a RawValue>,
        params: Option<&'a RawValue>,
    }
    struct Read;
    impl<'de> Visitor<'de> for Read {
        type Value = Members<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON-RPC request")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
            let mut m = Members::default();
            let twice = || A::Error::custom("a member twice");
            // A key with an escape is not borrowed: an error, and rmcp reads that body.
            while let Some(key) = map.next_key::<&'de str>()? {
                match key {
                    "jsonrpc" if !m.jsonrpc => {
                        map.next_value::<JsonRpcVersion2_0>()?;
                        m.jsonrpc = true;
                    }
                    "id" if m.id.is_none() => m.id = Some(map.next_value()?),
                    "method" if m.method.is_none() => m.method = Some(map.next_value()?),
                    "params" if m.params.is_none() => m.params = Some(map.next_value()?),
                    "jsonrpc" | "id" | "method" | "params" => return Err(twice()),
                    "result" | "error" => return Err(A::Error::custom("not a request")),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(m)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let m = de.deserialize_map(Read).ok()?;
    de.end().ok()?;
    let (true, Some(id), Some(method)) = (m.jsonrpc, m.id, m.method) else {
        return None;
    };
    // rmcp's request type reads `method` and `params` from the members as they were sent.
    let mut members = vec![("method", method)];
    members.extend(m.params.map(|p| ("params", p)));
    let map = serde::de::value::MapDeserializer::<_, serde_json::Error>::new(members.into_iter());
    let call = CallToolRequest::deserialize(map).ok()?;
    Some((id, call))
}

/// The HTTP answer for a reply, as rmcp's `json_response` mode writes it (a 500 with rmcp's
/// text if it cannot be serialised).
fn reply(message: &ServerJsonRpcMessage) -> Reply {
    let (status, content_type, body) = match serde_json::to_vec(message) {
        Ok(body) => (status_of(message), Some("application/json"), body),
        Err(e) => {
            tracing::error!("Internal server error when serialize json response: {e}");
            let text = format!("Encounter an error when serialize json response: {e}");
            (
                http::StatusCode::INTERNAL_SERVER_ERROR,
                None,
                text.into_bytes(),
            )
        }
    };
    let mut answer = http::Response::builder().status(status);
    if let Some(ct) = content_type {
        answer = answer.header(http::header::CONTENT_TYPE, ct);
    }
    answer
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("a status and a static header make a valid response")
}

/// The HTTP status rmcp gives a stateless reply (its `jsonrpc_http_status`, for a request
/// whose `_meta` is whole).
fn status_of(message: &ServerJsonRpcMessage) -> http::StatusCode {
    let ServerJsonRpcMessage::Error(error) = message else {
        return http::StatusCode::OK;
    };
    match error.error.code {
        ErrorCode::UNSUPPORTED_PROTOCOL_VERSION
        | ErrorCode::MISSING_REQUIRED_CLIENT_CAPABILITY
        | ErrorCode::HEADER_MISMATCH => http::StatusCode::BAD_REQUEST,
        ErrorCode::METHOD_NOT_FOUND => http::StatusCode::NOT_FOUND,
        _ => http::StatusCode::OK,
    }
}

/// Whether a schema (entry) has an `x-mcp-header` annotation anywhere in it.
fn maps_headers(key: &str, value: &serde_json::Value) -> bool {
    key == "x-mcp-header"
        || match value {
            serde_json::Value::Object(m) => m.iter().any(|(k, v)| maps_headers(k, v)),
            serde_json::Value::Array(a) => a.iter().any(|v| maps_headers("", v)),
            _ => false,
        }
}

/// The one value of a header, when it is sent exactly once and is text.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()
}

/// Whether the head is one rmcp's transport lets through to a stateless `tools/call`
/// unchanged: no session, no `Origin`, version 2026-07-28, `Mcp-Method: tools/call`, a JSON
/// body, an `Accept` listing both JSON and SSE without parameters, and one `Host` on rmcp's
/// list (`mcp.allowed_hosts`, compared as rmcp compares it).
fn head_is_plain(headers: &HeaderMap, allowed_hosts: &[String]) -> bool {
    if headers.contains_key("mcp-session-id") || headers.contains_key(http::header::ORIGIN) {
        return false;
    }
    if single(headers, "mcp-protocol-version") != Some(ProtocolVersion::V_2026_07_28.as_str())
        || single(headers, "mcp-method") != Some("tools/call")
    {
        return false;
    }
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let essence = ct.split_once(';').map_or(ct, |(e, _)| e);
            essence.trim().eq_ignore_ascii_case("application/json")
        });
    let (mut accepts_json, mut accepts_sse) = (false, false);
    for value in headers.get_all(http::header::ACCEPT) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for item in value.split(',') {
            let item = item.trim();
            if item.contains([';', '"']) {
                return false;
            }
            accepts_json |= item.eq_ignore_ascii_case("application/json");
            accepts_sse |= item.eq_ignore_ascii_case("text/event-stream");
        }
    }
    json && accepts_json && accepts_sse && host_allowed(headers, allowed_hosts)
}

/// rmcp's `Host` check: the header parses as an authority whose host (lower case, without
/// brackets) is on the list, and whose port is the listed one where the list names one. An
/// empty list allows every host.
fn host_allowed(headers: &HeaderMap, allowed_hosts: &[String]) -> bool {
    let Some(host) = single(headers, "host") else {
        return false;
    };
    let Ok(authority) = http::uri::Authority::try_from(host) else {
        return false;
    };
    if allowed_hosts.is_empty() {
        return true;
    }
    let normal = |h: &str| h.trim_matches('[').trim_matches(']').to_ascii_lowercase();
    let (host, port) = (normal(authority.host()), authority.port_u16());
    allowed_hosts.iter().any(|allowed| {
        let allowed = allowed.trim();
        if allowed.is_empty() {
            return false;
        }
        let (a_host, a_port) = match http::uri::Authority::try_from(allowed) {
            Ok(a) => (normal(a.host()), a.port_u16()),
            Err(_) => (normal(allowed), None),
        };
        a_host == host && a_port.is_none_or(|p| port == Some(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const PLAIN: &[(&str, &str)] = &[
        ("host", "127.0.0.1:3000"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "api_gateway"),
    ];

    fn hosts() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    }

    #[test]
    fn a_plain_head_takes_the_fast_path() {
        assert!(head_is_plain(&headers(PLAIN), &hosts()));
    }

    #[test]
    fn anything_unusual_goes_to_rmcp() {
        let with = |k: &str, v: &str| {
            let mut h = headers(PLAIN);
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
            head_is_plain(&h, &hosts())
        };
        assert!(!with("mcp-session-id", "abc"));
        assert!(!with("origin", "http://localhost"));
        assert!(!with("mcp-protocol-version", "2025-11-25"));
        assert!(!with("mcp-method", "tools/list"));
        assert!(!with("content-type", "text/plain"));
        assert!(!with("accept", "application/json"));
        assert!(!with("accept", "application/json;q=1, text/event-stream"));
        assert!(!with("host", "evil.example:3000"));
        assert!(with("content-type", "Application/JSON; charset=utf-8"));
        let mut twice = headers(PLAIN);
        twice.append("mcp-method", http::HeaderValue::from_static("tools/call"));
        assert!(!head_is_plain(&twice, &hosts()));
    }

    #[test]
    fn header_annotations_are_found_at_any_depth() {
        let plain = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let deep = json!({"properties": {"a": {"anyOf": [{"x-mcp-header": "A"}]}}});
        let any = |v: serde_json::Value| {
            v.as_object()
                .unwrap()
                .iter()
                .any(|(k, v)| maps_headers(k, v))
        };
        assert!(!any(plain));
        assert!(any(deep));
    }

    #[test]
    fn hosts_are_compared_as_rmcp_compares_them() {
        let h = |host: &str| headers(&[("host", host)]);
        assert!(host_allowed(&h("LOCALHOST:9"), &["localhost".into()]));
        assert!(host_allowed(&h("[::1]:3000"), &["::1".into()]));
        assert!(host_allowed(&h("a:3000"), &["a:3000".into()]));
        assert!(!host_allowed(&h("a:3001"), &["a:3000".into()]));
        assert!(!host_allowed(&h("a"), &["a:3000".into()]));
        assert!(host_allowed(&h("anything"), &[]));
        assert!(!host_allowed(&h("bad host"), &[]));
    }
}
