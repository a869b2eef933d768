//! The MCP door: an rmcp [`ServerHandler`] whose tools come from config (`api_gateway`,
//! `list_apis`), the Pingora↔tower bridge that serves it over Streamable HTTP at `/mcp`, and
//! the stdio transport.
//!
//! A policy denial or an upstream failure is a tool result with `isError: true` and a
//! machine-readable `error` code; protocol errors are kept for unknown tools and malformed
//! arguments.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::Method;
use http_body_util::{BodyExt, Full};
use pingora::apps::{HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, InitializeResult,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::call::CallRecord;
use crate::egress::{self, OutboundRequest, SAFE_RESPONSE_HEADERS};
use crate::error::GatewayError;
use crate::gateway::{Gateway, Live};
use crate::policy::{outbound, Call, Caller, CallerRequest, Door, Payload, Who};

/// Methods the `api_gateway` tool accepts, in schema order.
const TOOL_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// The MCP server handler. Cheap to clone: the service factory makes one per request.
#[derive(Clone)]
pub struct GatewayMcp {
    /// The gateway a request is served on: the snapshot its HTTP request started on (see
    /// [`GatewayMcp::at`]), or for stdio the serving one when the request arrived.
    gateway: Arc<Gateway>,
    live: Arc<Live>,
    /// The caller of a stdio session; HTTP requests carry theirs in the request extensions.
    local_caller: Option<Arc<Caller>>,
}

/// Arguments of the `api_gateway` tool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiGatewayArgs {
    api: String,
    endpoint: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    query: Map<String, Value>,
    #[serde(default)]
    body: Option<Value>,
}

fn default_method() -> String {
    "GET".into()
}

impl GatewayMcp {
    /// Starts the call's server span, named after the MCP conventions (`tools/call
    /// api_gateway`). A call that starts a trace hands its trace id to the caller it returns,
    /// so audit records and spans agree.
    fn start_span(
        &self,
        caller: Arc<Caller>,
        context: &RequestContext<RoleServer>,
        api: &str,
        record: &mut CallRecord,
    ) -> Arc<Caller> {
        use opentelemetry::KeyValue;
        if self.gateway.tracing.is_none() {
            return caller;
        }
        let mut c = (*caller).clone();
        let http = self.local_caller.is_none();
        record.span =
            self.gateway
                .server_span("tools/call api_gateway".into(), &mut c.trace, || {
                    let mut attrs = vec![
                        KeyValue::new("mcp.method.name", "tools/call"),
                        KeyValue::new("gen_ai.tool.name", "api_gateway"),
                        KeyValue::new("gen_ai.operation.name", "execute_tool"),
                        KeyValue::new("jsonrpc.request.id", context.id.to_string()),
                        KeyValue::new("network.transport", if http { "tcp" } else { "pipe" }),
                        KeyValue::new("api_gateway.door", "mcp"),
                        KeyValue::new("api_gateway.api", api.to_string()),
                        KeyValue::new("api_gateway.principal", c.principal.id.clone()),
                    ];
                    if let Some(ip) = c.client_ip {
                        attrs.push(KeyValue::new("client.address", ip.to_string()));
                    }
                    attrs
                });
        Arc::new(c)
    }

    pub fn new(live: Arc<Live>) -> Self {
        GatewayMcp {
            gateway: live.current(),
            live,
            local_caller: None,
        }
    }

    /// This handler on the gateway the request is to be served on: the snapshot the HTTP
    /// bridge took when the request arrived, else (stdio) the serving one. A reload never
    /// changes the config under a request, and a long legacy session still sees reloads.
    fn at(&self, context: &RequestContext<RoleServer>) -> GatewayMcp {
        let gateway = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.extensions.get::<Arc<Gateway>>())
            .cloned()
            .unwrap_or_else(|| self.live.current());
        GatewayMcp {
            gateway,
            live: self.live.clone(),
            local_caller: self.local_caller.clone(),
        }
    }

    /// Every tool, unfiltered, over the gateway's APIs: built once per config.
    fn all_tools(gateway: &Gateway) -> Arc<Vec<Tool>> {
        gateway
            .mcp_tools
            .get_or_init(|| Arc::new(Self::build_all_tools(gateway)))
            .clone()
    }

    /// The caller of this request: attached by the HTTP bridge, or the stdio session's.
    fn caller(&self, context: &RequestContext<RoleServer>) -> Option<Arc<Caller>> {
        context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.extensions.get::<Arc<Caller>>())
            .cloned()
            .or_else(|| self.local_caller.clone())
    }

    /// The APIs this caller may use, each with the methods it may use on it.
    fn visible_apis(&self, caller: &Caller) -> Vec<(&Arc<crate::config::Api>, Vec<Method>)> {
        let access = self.gateway.pipeline.access();
        self.gateway
            .config
            .apis
            .iter()
            .map(|a| (a, access.visible_methods(&caller.principal, a)))
            .filter(|(_, m)| !m.is_empty())
            .collect()
    }

    /// The tools, as this caller sees them: the `api` enum and the method list hold only what
    /// its roles permit, and `api_gateway` is left out when nothing is permitted.
    fn tools(&self, caller: &Caller) -> Vec<Tool> {
        Self::tools_for(&self.visible_apis(caller))
    }

    /// Every tool over every configured API.
    fn build_all_tools(gateway: &Gateway) -> Vec<Tool> {
        let all: Vec<_> = gateway
            .config
            .apis
            .iter()
            .map(|a| (a, a.methods.clone()))
            .collect();
        Self::tools_for(&all)
    }

    fn tools_for(visible: &[(&Arc<crate::config::Api>, Vec<Method>)]) -> Vec<Tool> {
        let names: Vec<&str> = visible.iter().map(|(a, _)| a.name.as_str()).collect();
        let methods: Vec<&str> = TOOL_METHODS
            .iter()
            .copied()
            .filter(|m| {
                visible
                    .iter()
                    .any(|(_, ms)| ms.iter().any(|am| am.as_str() == *m))
            })
            .collect();
        let catalogue: Vec<String> = visible
            .iter()
            .map(|(a, _)| format!("- {}: {}", a.name, a.description))
            .collect();
        let input = json!({
            "type": "object",
            "properties": {
                "api": {"type": "string", "enum": names,
                        "description": "Name of the API to call (its configured base URL is accepted too)."},
                "endpoint": {"type": "string",
                             "description": "Path under the API's base URL, e.g. \"/v1/items\"; may include a query string."},
                "method": {"type": "string", "enum": methods, "default": "GET"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"},
                            "description": "Extra request headers. Credentials are added by the gateway; do not send any."},
                "query": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]},
                          "description": "Query parameters."},
                "body": {"description": "JSON request body for POST, PUT and PATCH."}
            },
            "required": ["api", "endpoint"],
            "additionalProperties": false
        });
        // One schema for both outcomes: clients (the TypeScript SDK among them) validate
        // `structuredContent` against it even on `isError` results.
        let output = json!({
            "type": "object",
            "properties": {
                "status": {"type": "integer", "description": "Upstream HTTP status, or the gateway's status for an error"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "data": {"description": "JSON when the upstream sent JSON, else text"},
                "truncated": {"type": "boolean"},
                "error": {"type": "string", "description": "Machine-readable reason, on isError results only"},
                "message": {"type": "string"},
                "retry_after_s": {"type": "integer", "description": "With error rate_limited: seconds until a retry is admitted"},
                "policy": {"type": "string", "description": "With error rate_limited: the policy that refused"},
                "reason": {"type": "string", "description": "A finer machine-readable reason, e.g. token_expired or ip_denied"}
            },
            "required": ["status"]
        });
        let read_only = methods.iter().all(|m| *m == "GET");
        let mut call = Tool::new(
            "api_gateway",
            format!(
                "Call an allow-listed HTTP API through the gateway. Credentials are injected for you; \
                 redirects are returned unless the API is configured to follow them. Available APIs:\n{}",
                catalogue.join("\n")
            ),
            as_object(input),
        );
        call.output_schema = Some(Arc::new(as_object(output)));
        call.annotations = Some(
            ToolAnnotations::with_title("API gateway")
                .read_only(read_only)
                .destructive(methods.contains(&"DELETE") || methods.contains(&"PUT"))
                .idempotent(read_only)
                .open_world(true),
        );
        let mut list = Tool::new(
            "list_apis",
            "List the APIs you may call with api_gateway: names, descriptions, methods and path patterns.",
            as_object(json!({"type": "object", "properties": {}, "additionalProperties": false})),
        );
        list.annotations = Some(
            ToolAnnotations::with_title("List APIs")
                .read_only(true)
                .destructive(false)
                .idempotent(true)
                .open_world(false),
        );
        if names.is_empty() {
            return vec![list];
        }
        vec![call, list]
    }

    fn list_apis(&self, caller: &Caller) -> CallToolResult {
        let limits = &self.gateway.config.rate_limits;
        let apis: Vec<Value> = self
            .visible_apis(caller)
            .into_iter()
            .map(|(a, methods)| {
                json!({
                    "name": a.name,
                    "description": a.description,
                    "methods": methods.iter().map(Method::as_str).collect::<Vec<_>>(),
                    "paths": a.paths.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                    "deny_paths": a.deny_paths.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                    "rate_limit": a.rate_limit.as_ref().or(limits.default.as_ref()).map(policy_json),
                    "per_user_rate_limit": limits.per_user.as_ref().map(policy_json),
                })
            })
            .collect();
        CallToolResult::structured(json!({ "apis": apis }))
    }

    /// The caller's trace continues upstream, under the request's client span.
    fn set_traceparent(
        &self,
        request: &mut OutboundRequest,
        caller: &Caller,
        record: &mut CallRecord,
        api: &crate::config::Api,
    ) {
        let tp = self.gateway.upstream_traceparent(
            record.span.as_mut(),
            &caller.trace,
            request.method.as_str(),
            api,
            &request.path_and_query,
        );
        request.headers.retain(|(k, _)| k != "traceparent");
        if let Ok(tp) = http::HeaderValue::from_str(&tp) {
            request
                .headers
                .push((http::HeaderName::from_static("traceparent"), tp));
        }
    }

    async fn api_gateway(
        &self,
        args: ApiGatewayArgs,
        caller: &Arc<Caller>,
        record: &mut CallRecord,
    ) -> Result<Value, GatewayError> {
        let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
            .ok()
            .filter(|m| TOOL_METHODS.contains(&m.as_str()))
            .ok_or_else(|| {
                GatewayError::invalid_arguments(format!(
                    "method must be one of {}",
                    TOOL_METHODS.join(", ")
                ))
            })?;

        // The arguments as HTTP: which of these headers may go upstream is admission's call.
        if args.headers.len() > 32 {
            return Err(GatewayError::invalid_header(
                "at most 32 headers may be set",
            ));
        }
        let mut headers = Vec::with_capacity(args.headers.len() + 1);
        for (k, v) in &args.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                GatewayError::invalid_header(format!("{k:?} is not a valid header name"))
            })?;
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => v.to_string(),
                _ => {
                    return Err(GatewayError::invalid_header(format!(
                        "header {k:?} must be a string"
                    )))
                }
            };
            let value = http::HeaderValue::from_str(&text).map_err(|_| {
                GatewayError::invalid_header(format!("header {k:?} has an invalid value"))
            })?;
            headers.push((name, value));
        }

        let body = match &args.body {
            None | Some(Value::Null) => None,
            Some(v) => Some(Bytes::from(serde_json::to_vec(v).map_err(|_| {
                GatewayError::invalid_arguments("body could not be serialised as JSON")
            })?)),
        };
        if body.is_some() && !headers.iter().any(|(k, _)| k == http::header::CONTENT_TYPE) {
            headers.push((
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            ));
        }

        let mut query = Vec::with_capacity(args.query.len());
        for (k, v) in &args.query {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => v.to_string(),
                _ => {
                    return Err(GatewayError::invalid_arguments(format!(
                        "query parameter {k:?} must be a string, number or boolean"
                    )))
                }
            };
            query.push((k.clone(), v));
        }

        let admitted = self
            .gateway
            .pipeline
            .admit(&Call {
                door: Door::Mcp,
                who: Who::Identified(caller.clone()),
                api: &args.api,
                method: &method,
                endpoint: &args.endpoint,
                query: &query,
                payload: Payload::Whole {
                    headers: &headers,
                    body: body.as_deref(),
                },
            })
            .await
            .map_err(|r| r.error)?;
        record.admitted(&admitted);
        record.bytes_in = body.as_ref().map_or(0, |b| b.len() as u64);
        let api = admitted.api.clone();
        record.upstream_started = Some(std::time::Instant::now());
        let max_body = api
            .max_response_bytes
            .unwrap_or(self.gateway.config.mcp.max_response_bytes);
        let outbound = |credential: Option<(http::HeaderName, http::HeaderValue)>| {
            let mut h = admitted.headers.forward.clone();
            h.extend(credential);
            h
        };
        let mut request = OutboundRequest {
            method,
            path_and_query: admitted.path_and_query.clone(),
            headers: outbound(admitted.headers.credential.clone()),
            body,
        };
        self.set_traceparent(&mut request, caller, record, &api);
        let mut resp = self
            .gateway
            .egress
            .send(&api, admitted.addr, request.clone(), max_body)
            .await?;
        crate::telemetry::metrics().upstream(
            Door::Mcp,
            &api,
            resp.reused,
            Some(&caller.principal.id),
        );

        // Redirects, when the API allows them: each hop is admitted again (an allow-listed
        // API and path the caller may use, an address past the SSRF guard), and the
        // credential stays behind on a cross-origin hop.
        let mut hop_api: Arc<crate::config::Api> = api.clone();
        let mut hops = 0;
        while hops < api.follow_redirects && matches!(resp.status, 301 | 302 | 303 | 307 | 308) {
            let Some(location) = resp
                .headers
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                break;
            };
            hops += 1;
            let here = hop_api
                .base
                .url_of(&request.path_and_query)
                .ok_or_else(|| GatewayError::internal("could not rebuild the request URL"))?;
            if matches!(resp.status, 301..=303) && request.method != Method::HEAD {
                // As browsers do: the redirected request is a GET without a body.
                request.method = Method::GET;
                request.body = None;
            }
            let (next_hop, addr, path_and_query) = self
                .gateway
                .pipeline
                .admit_redirect(caller, &api, &here, location, &request.method)
                .await?;
            request.path_and_query = path_and_query;
            request.headers = outbound(outbound::credential_header(&next_hop));
            if request.body.is_none() {
                request
                    .headers
                    .retain(|(k, _)| k != http::header::CONTENT_TYPE);
            }
            if let Some(s) = record.span.as_mut() {
                s.upstream_answered(resp.status);
            }
            self.set_traceparent(&mut request, caller, record, &next_hop);
            resp = self
                .gateway
                .egress
                .send(&next_hop, addr, request.clone(), max_body)
                .await?;
            hop_api = next_hop;
        }

        if let Some(s) = record.span.as_mut() {
            s.upstream_answered(resp.status);
        }
        let mut safe = Map::new();
        for name in SAFE_RESPONSE_HEADERS {
            if let Some(v) = resp.headers.get(*name).and_then(|v| v.to_str().ok()) {
                let v = String::from_utf8_lossy(&egress::redact_credential(
                    &api,
                    Bytes::copy_from_slice(v.as_bytes()),
                ))
                .into_owned();
                safe.insert((*name).to_string(), Value::String(v));
            }
        }
        let body = egress::redact_credential(&api, resp.body);
        let is_json = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                let ct = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                ct == "application/json" || ct.ends_with("+json")
            });
        let data = if is_json && !resp.truncated {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        } else {
            Value::String(String::from_utf8_lossy(&body).into_owned())
        };
        record.bytes_out = body.len() as u64;
        Ok(json!({
            "status": resp.status,
            "headers": safe,
            "data": data,
            "truncated": resp.truncated,
        }))
    }
}

fn policy_json(p: &crate::ratelimit::Policy) -> Value {
    json!({"name": p.name, "requests": p.requests, "window_s": p.window.as_secs_f64(), "burst": p.burst})
}

/// A request reached a handler without an identified caller: a wiring bug, never a client's
/// doing, so it is refused rather than treated as anonymous.
fn no_caller() -> McpError {
    McpError::internal_error("the caller was not identified", None)
}

fn as_object(v: Value) -> JsonObject {
    match v {
        Value::Object(m) => m,
        _ => JsonObject::new(),
    }
}

impl ServerHandler for GatewayMcp {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("api-gateway-mcp", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Call external HTTP APIs with the api_gateway tool; list_apis shows what you may call. \
                 Credentials are injected by the gateway.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let caller = self.caller(&context).ok_or_else(no_caller)?;
        Ok(ListToolsResult {
            tools: self.at(&context).tools(&caller),
            ..Default::default()
        })
    }

    /// The unfiltered definition (rmcp uses it to validate results); what a caller may use
    /// is decided per call.
    fn get_tool(&self, name: &str) -> Option<Tool> {
        Self::all_tools(&self.live.current())
            .iter()
            .find(|t| t.name == name)
            .cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = self.caller(&context).ok_or_else(no_caller)?;
        let this = self.at(&context);
        let this = &this;
        let args = Value::Object(request.arguments.unwrap_or_default());
        match request.name.as_ref() {
            "list_apis" => Ok(this.list_apis(&caller).into()),
            "api_gateway" => {
                let args: ApiGatewayArgs = serde_json::from_value(args).map_err(|e| {
                    McpError::invalid_params(format!("invalid api_gateway arguments: {e}"), None)
                })?;
                let method = args.method.to_ascii_uppercase();
                let mut record = CallRecord::open(
                    &this.gateway,
                    Door::Mcp,
                    &method,
                    &args.api,
                    &args.endpoint,
                    Some("api_gateway"),
                );
                let api_label = record.api_label().to_string();
                let caller = this.start_span(caller, &context, &api_label, &mut record);
                record.identified(&caller);
                let outcome = this.api_gateway(args, &caller, &mut record).await;
                let (status, error) = match &outcome {
                    Ok(v) => (v["status"].as_u64().unwrap_or(0) as u16, None),
                    Err(e) => (e.kind.status(), Some(e)),
                };
                record.finish(&this.gateway, status, error);
                let result = match outcome {
                    Ok(v) => CallToolResult::structured(v),
                    Err(e) => CallToolResult::structured_error(e.tool_error_json()),
                };
                Ok(result.into())
            }
            other => Err(McpError::invalid_params(
                format!("unknown tool {other:?}"),
                None,
            )),
        }
    }
}

/// Serves the tools over stdin/stdout until the client closes the stream.
///
/// The session's caller is identified once, before serving, from `API_GATEWAY_MCP_TOKEN` or
/// `API_GATEWAY_MCP_API_KEY`; bad credentials stop the process with the reason.
pub async fn serve_stdio(live: Arc<Live>) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let caller = live
        .current()
        .pipeline
        .identify_local(&|name| std::env::var(name).ok())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "stdio caller not authenticated ({}): {}",
                e.reason_code(),
                e.message
            )
        })?;
    let handler = GatewayMcp {
        local_caller: Some(Arc::new(caller)),
        ..GatewayMcp::new(live)
    };
    let running = handler.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}

/// rmcp's Streamable HTTP service over the gateway's tools, as `[mcp]` configures it. It
/// expects each request to carry its identified [`Caller`] in the request extensions.
pub fn http_service(
    live: Arc<Live>,
    cancel: CancellationToken,
) -> StreamableHttpService<GatewayMcp, LocalSessionManager> {
    let gateway = live.current();
    let cfg = &gateway.config.mcp;
    let mut http_cfg = StreamableHttpServerConfig::default()
        .with_allowed_hosts(cfg.allowed_hosts.clone())
        .with_allowed_origins(cfg.allowed_origins.clone())
        .with_legacy_session_mode(cfg.legacy_sessions)
        .with_json_response(cfg.json_response)
        .with_max_request_body_bytes(cfg.max_request_bytes)
        .with_cancellation_token(cancel);
    if cfg.allowed_origins.is_empty() {
        // Secure default: with no configured origins, any browser Origin is refused.
        http_cfg = http_cfg.enforce_origin_validation();
    }
    // Each request or session gets a handler on the config serving then (requests still
    // take their own snapshot, see `GatewayMcp::at`); the factory keeps no config alive.
    StreamableHttpService::new(
        move || Ok(GatewayMcp::new(live.clone())),
        Arc::new(LocalSessionManager::default()),
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
        McpHttpApp {
            service: http_service(live.clone(), cancel),
            max_request_bytes: live.current().config.mcp.max_request_bytes,
            live,
            owners: std::sync::Mutex::new(SessionOwners::default()),
        }
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
    async fn refuse(
        gw: &Gateway,
        mut session: ServerSession,
        caller: Option<&Caller>,
        e: &GatewayError,
    ) -> Option<ReusedHttpStream> {
        tracing::info!(
            error = e.kind.code(),
            reason = e.reason.map_or("", crate::error::Reason::code),
            door = "mcp",
            "request refused"
        );
        crate::telemetry::metrics().refusal(Door::Mcp, None, e);
        gw.audit(|| {
            let head = session.req_header();
            let mut event = crate::audit::AuditEvent::new(
                Door::Mcp,
                caller,
                head.method.as_str(),
                head.uri.path(),
            );
            event.failed(e);
            event
        });
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
        match session.read_request().await {
            Ok(true) => {}
            _ => return None,
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
        if path != "/mcp" && path != "/mcp/" {
            Self::respond_plain(&mut session, 404, "not found: the MCP endpoint is /mcp\n").await;
            return crate::admin::finish(session).await;
        }

        // Read the body, capped, before handing the request to rmcp.
        let mut body = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_request_bytes {
                        Self::respond_plain(&mut session, 413, "request body too large\n").await;
                        return None;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => return None,
            }
        }

        let body = body.freeze();
        let head = session.req_header();
        let raw_head = session.as_http1().map(|h1| h1.get_headers_raw_bytes());
        let identified = gw
            .pipeline
            .identify(&CallerRequest {
                peer: session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip()),
                method: &head.method,
                path: head.uri.path(),
                query: head.uri.query().unwrap_or(""),
                headers: &head.headers,
                raw_head: raw_head.as_deref(),
                body: Some(&body),
                trace: crate::trace::TraceContext::from_headers(&head.headers),
            })
            .await;
        let caller = match identified {
            Ok(c) => Arc::new(c),
            Err(e) => return Self::refuse(&gw, session, None, &e).await,
        };
        let head = session.req_header();
        let mut builder = http::Request::builder()
            .method(head.method.clone())
            .uri(head.uri.clone());
        for (k, v) in head.headers.iter() {
            builder = builder.header(k, v);
        }
        let Ok(mut request) = builder.body(Full::new(body)) else {
            Self::respond_plain(&mut session, 400, "malformed request\n").await;
            return None;
        };
        let session_id = request
            .headers()
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
            return Self::refuse(&gw, session, Some(&caller), &e).await;
        }
        let principal_id = caller.principal.id.clone();
        let closing = request.method() == http::Method::DELETE;
        request.extensions_mut().insert(caller);
        request.extensions_mut().insert(gw.clone());

        let response = match tower_service::Service::call(&mut self.service.clone(), request).await
        {
            Ok(r) => r,
            Err(never) => match never {},
        };
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
