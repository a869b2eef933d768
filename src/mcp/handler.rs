//! The rmcp [`ServerHandler`] of the MCP door, [`GatewayMcp`]: it lists the tools and runs
//! the `api_gateway` call (argument translation, admission, egress, redirects, the result).

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ElicitRequest, ElicitRequestParams,
    ElicitResult, ElicitationAction, Implementation, InitializeResult, InputRequest, InputRequests,
    InputRequiredResult, ListToolsResult, PaginatedRequestParams, ProtocolVersion,
    RequestStateCodec, SealOptions, ServerCapabilities, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::Digest;

use crate::call::CallRecord;
use crate::egress::{self, OutboundRequest, SAFE_RESPONSE_HEADERS};
use crate::error::GatewayError;
use crate::gateway::{Gateway, Live};
use crate::policy::{outbound, Call, Caller, Door, Payload, Who};
use crate::surface::TOOL_METHODS;

/// The MCP server handler. Cheap to clone: the service factory makes one per request.
#[derive(Clone)]
pub struct GatewayMcp {
    /// The gateway a request is served on: the snapshot its HTTP request started on (see
    /// [`GatewayMcp::at`]), or for stdio the serving one when the request arrived.
    pub(super) gateway: Arc<Gateway>,
    pub(super) live: Arc<Live>,
    /// The caller of a stdio session; HTTP requests carry theirs in the request extensions.
    pub(super) local_caller: Option<Arc<Caller>>,
}

/// Arguments of the `api_gateway` tool.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiGatewayArgs {
    pub(super) api: String,
    /// Absent only with `operation`, which [`GatewayMcp::resolve_operation`] turns into one.
    #[serde(default)]
    pub(super) endpoint: Option<String>,
    #[serde(default = "default_method")]
    pub(super) method: String,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    query: Map<String, Value>,
    #[serde(default)]
    body: Option<Value>,
    /// JMESPath applied to a JSON answer, where the API sets `allow_agent_select`.
    #[serde(default)]
    select: Option<String>,
    /// Instead of `endpoint` and `method`: an operation of an API described by OpenAPI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    operation: Option<String>,
    /// With `operation`: its path parameters.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    path: Map<String, Value>,
    /// The generated tool this call came through (`None`: `api_gateway`).
    #[serde(skip)]
    tool: Option<Arc<str>>,
}

/// A completed `api_gateway` call: the result for the model and the `_meta` saying how it
/// was shaped.
pub(super) struct Answer {
    result: Value,
    meta: Value,
    /// Content beside the JSON: an image, an embedded resource or a resource link.
    blocks: Vec<rmcp::model::ContentBlock>,
}

impl ApiGatewayArgs {
    pub(super) fn endpoint(&self) -> &str {
        self.endpoint.as_deref().unwrap_or("")
    }
}

/// What a sealed request state is bound to: the caller and the call's arguments (worked out
/// only when a state is made or opened).
fn bound_to(caller: &Caller, args: &ApiGatewayArgs) -> String {
    let text = serde_json::to_string(args).unwrap_or_default();
    format!(
        "{}\n{}",
        caller.principal.id,
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    )
}

/// The key of the connect request in `inputRequests` / `inputResponses`.
const CONNECT_INPUT: &str = "connect";

/// Stands in for an API no longer configured, when naming one in a refusal.
static EMPTY_API: std::sync::LazyLock<crate::config::Api> = std::sync::LazyLock::new(|| {
    crate::config::Api::internal(
        "unknown",
        "http://127.0.0.1/",
        false,
        std::time::Duration::from_secs(1),
    )
    .expect("a valid URL")
});

/// What the HTTP bridge attached to a request: in the HTTP request's extensions, which rmcp's
/// transport hands on as `http::request::Parts`, or in the context itself (the fast path).
fn attached<T: Send + Sync + 'static>(context: &RequestContext<RoleServer>) -> Option<&T> {
    context.extensions.get::<T>().or_else(|| {
        context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.extensions.get::<T>())
    })
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
        request_id: &str,
        api: &str,
        tool: &str,
        record: &mut CallRecord,
    ) -> Arc<Caller> {
        use opentelemetry::KeyValue;
        if self.gateway.tracing.is_none() {
            return caller;
        }
        let mut c = (*caller).clone();
        let http = self.local_caller.is_none();
        record.span = self
            .gateway
            .server_span(format!("tools/call {tool}"), &mut c.trace, || {
                let mut attrs = vec![
                    KeyValue::new("mcp.method.name", "tools/call"),
                    KeyValue::new("gen_ai.tool.name", tool.to_string()),
                    KeyValue::new("gen_ai.operation.name", "execute_tool"),
                    KeyValue::new("jsonrpc.request.id", request_id.to_string()),
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
        let gateway = attached::<Arc<Gateway>>(context)
            .cloned()
            .unwrap_or_else(|| self.live.current());
        GatewayMcp {
            gateway,
            live: self.live.clone(),
            local_caller: self.local_caller.clone(),
        }
    }

    /// One `api_gateway` call, recorded from admission to answer.
    pub(super) async fn run_api_gateway(
        &self,
        args: ApiGatewayArgs,
        caller: &Arc<Caller>,
        request_id: &str,
    ) -> Result<Answer, GatewayError> {
        let method = args.method.to_ascii_uppercase();
        let tool: std::borrow::Cow<'static, str> = match &args.tool {
            Some(t) => t.to_string().into(),
            None => "api_gateway".into(),
        };
        let mut record = CallRecord::open(
            &self.gateway,
            Door::Mcp,
            &method,
            self.gateway.config.api(&args.api),
            || args.endpoint().to_string(),
            Some(tool.clone()),
        );
        let api_label = record.api_label().to_string();
        let caller = self.start_span(caller.clone(), request_id, &api_label, &tool, &mut record);
        record.identified(&caller);
        let outcome = self.api_gateway(&args, &caller, &mut record).await;
        let (status, error) = match &outcome {
            Ok(a) => (a.result["status"].as_u64().unwrap_or(0) as u16, None),
            Err(e) => (e.kind.status(), Some(e)),
        };
        record.finish(&self.gateway, status, error, || args.endpoint().to_string());
        outcome
    }

    pub(super) fn state_codec(&self) -> Result<RequestStateCodec, McpError> {
        RequestStateCodec::try_new(self.gateway.pipeline.vault().request_state_key().to_vec())
            .map_err(|_| McpError::internal_error("request state key unavailable", None))
    }

    /// The connect link of a `credential_required` refusal, when the API asks for the user
    /// to be sent there (`on_missing = "connect"`).
    fn connect_link(&self, e: &GatewayError, api: &str) -> Option<String> {
        if e.reason != Some(crate::error::Reason::CredentialRequired) {
            return None;
        }
        let connect = self
            .gateway
            .config
            .api(api)
            .and_then(|a| a.dynamic_credential.as_ref())
            .is_some_and(|d| d.on_missing == crate::config::OnMissing::Connect);
        match e.details.as_ref()?.get("connect_url")? {
            Value::String(u) if connect => Some(u.clone()),
            _ => None,
        }
    }

    /// Sends the user to the connect page, the way the client can take it:
    /// - a 2026-07-28 client that declares URL elicitation gets `input_required` with the
    ///   link and a sealed request state (bound to the caller, the arguments and a short
    ///   expiry); its retry runs the call;
    /// - a legacy session whose client declared URL elicitation gets `elicitation/create`
    ///   during the call; once the user accepts and the credential exists, the call runs
    ///   again, once.
    ///
    /// `None`: the client cannot be asked; the refusal (with its `connect_url`) stands.
    async fn ask_to_connect(
        &self,
        url: &str,
        args: &ApiGatewayArgs,
        caller: &Arc<Caller>,
        context: &RequestContext<RoleServer>,
        bound: &str,
    ) -> Result<Option<CallToolResponse>, McpError> {
        let modern = context
            .protocol_version()
            .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28);
        let message = format!(
            "API {:?} acts with your own account or credential. Open this page to connect it, then continue.",
            args.api
        );
        if modern {
            let url_ok = context
                .client_capabilities()
                .and_then(|c| c.elicitation)
                .is_some_and(|e| e.url.is_some());
            if !url_ok {
                return Ok(None);
            }
            let codec = self.state_codec()?;
            let state = codec
                .seal_json_with(
                    &json!({"k": "connect", "api": args.api}),
                    &SealOptions::new()
                        .associated_data(bound.as_bytes())
                        .ttl(crate::vault::CONNECT_TTL),
                )
                .map_err(|_| McpError::internal_error("could not seal the request state", None))?;
            let mut requests = InputRequests::new();
            requests.insert(
                CONNECT_INPUT.to_string(),
                InputRequest::Elicitation(ElicitRequest::new(
                    ElicitRequestParams::UrlElicitationParams {
                        meta: None,
                        message,
                        url: url.to_string(),
                        elicitation_id: String::new(),
                    },
                )),
            );
            return Ok(Some(
                InputRequiredResult::new(Some(requests), Some(state)).into(),
            ));
        }
        // A legacy session: ask during the call, when the client said it can open links.
        if !self.session_elicits(context, rmcp::service::ElicitationMode::Url) {
            return Ok(None);
        }
        let mut id = [0u8; 8];
        crate::trace::fill_random_id(&mut id);
        let asked = context
            .peer
            .elicit_url_with_timeout(
                message,
                url::Url::parse(url)
                    .map_err(|_| McpError::internal_error("bad connect link", None))?,
                hex::encode(id),
                Some(crate::vault::CONNECT_TTL),
            )
            .await;
        let shown = self.gateway.config.explain_denials;
        let vault = self.gateway.pipeline.vault();
        let Some(api) = self.gateway.config.api(&args.api).cloned() else {
            return Ok(None);
        };
        match asked {
            Ok(ElicitationAction::Accept) => {
                // The user is connecting in the browser: wait (bounded) for the credential.
                let deadline = std::time::Instant::now() + crate::vault::CONNECT_TTL;
                while !vault.has(&api.name, &caller.principal.id).await {
                    if std::time::Instant::now() > deadline || context.ct.is_cancelled() {
                        return Ok(None);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                let result = match self
                    .run_api_gateway(args.clone(), caller, &context.id.to_string())
                    .await
                {
                    Ok(a) => a.into_result(),
                    Err(e) => tool_error(&e, shown),
                };
                Ok(Some(result.into()))
            }
            Ok(_) => {
                let e = vault.required(
                    &api,
                    &caller.principal.id,
                    "the user declined to connect their account",
                );
                Ok(Some(tool_error(&e, shown).into()))
            }
            Err(_) => Ok(None),
        }
    }

    /// Whether this is a legacy session (HTTP or stdio) whose client declared elicitation in
    /// `mode`, so the server may ask it during a call.
    pub(super) fn session_elicits(
        &self,
        context: &RequestContext<RoleServer>,
        mode: rmcp::service::ElicitationMode,
    ) -> bool {
        (self.local_caller.is_some() || context.peer.peer_info().is_some())
            && context.peer.supported_elicitation_modes().contains(&mode)
    }

    /// The caller of this request: attached by the HTTP bridge, or the stdio session's.
    fn caller(&self, context: &RequestContext<RoleServer>) -> Option<Arc<Caller>> {
        attached::<Arc<Caller>>(context)
            .cloned()
            .or_else(|| self.local_caller.clone())
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
        args: &ApiGatewayArgs,
        caller: &Arc<Caller>,
        record: &mut CallRecord,
    ) -> Result<Answer, GatewayError> {
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
            let text = scalar_text(v).ok_or_else(|| {
                GatewayError::invalid_header(format!("header {k:?} must be a string"))
            })?;
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
            let v = scalar_text(v).ok_or_else(|| {
                GatewayError::invalid_arguments(format!(
                    "query parameter {k:?} must be a string, number or boolean"
                ))
            })?;
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
                endpoint: args.endpoint(),
                query: &query,
                opaque_segments: args.tool.is_some() || args.operation.is_some(),
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
        // The caller's select, checked before the upstream is called.
        let select = match &args.select {
            None => None,
            Some(_) if !api.response.allow_agent_select => {
                return Err(GatewayError::because(
                    crate::error::Reason::InvalidSelect,
                    format!(
                        "API {:?} does not take select (its response.allow_agent_select is off)",
                        api.name
                    ),
                )
                .with_detail("pointer", json!("/select")))
            }
            Some(text) => Some(crate::config::Query::compile(text).map_err(|e| {
                GatewayError::because(
                    crate::error::Reason::InvalidSelect,
                    format!("select is not a JMESPath expression: {e}"),
                )
                .with_detail("pointer", json!("/select"))
            })?),
        };
        record.upstream_started = Some(std::time::Instant::now());
        let max_body = api
            .response
            .max_upstream_bytes
            .unwrap_or(self.gateway.config.mcp.max_response_bytes);
        // Read past the cap by the longest credential form, so a form straddling it is
        // masked whole before the rest is dropped.
        let read_cap = max_body + egress::longest_credential_form(&api);
        let outbound = |credential: Option<(http::HeaderName, http::HeaderValue)>| {
            let mut h = admitted.headers.forward.clone();
            h.extend(admitted.headers.set.iter().cloned());
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
            .send(&api, admitted.addr, request.clone(), read_cap)
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
        let mut switched_to_get = false;
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
                switched_to_get = true;
            }
            let (next_hop, addr, path_and_query) = self
                .gateway
                .pipeline
                .admit_redirect(caller, &api, &here, location, &request.method)
                .await?;
            request.path_and_query = path_and_query;
            request.headers = outbound(outbound::credential_header(&next_hop));
            if switched_to_get {
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
                .send(&next_hop, addr, request.clone(), read_cap)
                .await?;
            hop_api = next_hop;
        }

        if let Some(s) = record.span.as_mut() {
            s.upstream_answered(resp.status);
        }
        let redactor = egress::Redactor::for_api(&api);
        let mut redacted = Default::default();
        let mut safe = Map::new();
        // The first value of each safe header the upstream sent, in one walk of its headers
        // (the list is longer than most answers' headers, and a lookup by name parses it).
        let mut seen = 0u32;
        for (name, v) in &resp.headers {
            let Some(i) = SAFE_RESPONSE_HEADERS
                .iter()
                .position(|h| *h == name.as_str())
            else {
                continue;
            };
            if seen & (1 << i) != 0 {
                continue;
            }
            seen |= 1 << i;
            let Ok(v) = v.to_str() else { continue };
            let v = redactor
                .text(v, &mut redacted)
                .unwrap_or_else(|| v.to_string());
            safe.insert(name.as_str().to_string(), Value::String(v));
        }
        let header = |name| resp.headers.get(name).and_then(|v| v.to_str().ok());
        let read_cut = resp.truncated || resp.body.len() > max_body;
        // gzip and deflate are decompressed (bounded) so they can be masked and shaped; an
        // encoding the gateway cannot read is refused where a credential must be masked.
        let (mut bytes, decoded) =
            egress::decode_body(&api, &resp.headers, resp.body, read_cut, max_body)?;
        if !decoded {
            egress::check_inspectable(&api, &resp.headers)?;
        }
        if read_cut && !decoded {
            // The cap falls where it falls: mask first, then drop what lies past it.
            bytes = egress::redact_credential(&api, bytes);
            bytes.truncate(max_body);
        }
        let mut shaped = egress::shape(
            &api,
            egress::Body {
                bytes,
                content_type: header(http::header::CONTENT_TYPE),
                read_cut,
                declared_len: header(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.parse().ok())
                    .filter(|_| !decoded),
            },
            select.as_ref(),
        )?;
        for (kind, n) in redacted {
            *shaped.redacted.entry(kind).or_default() += n;
        }
        record.bytes_out = shaped.original_bytes;
        let mut blocks = Vec::new();
        if let Some((mime, bytes)) = shaped.binary.take() {
            let link = self.binary_block(&api, caller, &mime, bytes)?;
            if let Some(r) = link.as_resource_link() {
                shaped.data["resource"] = json!(r.uri);
            }
            blocks.push(link);
        }
        let meta = shaped.meta();
        record.shaping = Some(meta.clone());
        Ok(Answer {
            result: json!({
                "status": resp.status,
                "headers": safe,
                "data": shaped.data,
                "truncated": shaped.truncated,
            }),
            meta,
            blocks,
        })
    }

    /// A binary answer as the API's `response.binary` says: an image inline (up to 1 MiB
    /// unless the API inlines everything), an embedded resource, a link to a stored copy only
    /// this caller can read, or a refusal.
    fn binary_block(
        &self,
        api: &crate::config::Api,
        caller: &Caller,
        mime: &str,
        bytes: Bytes,
    ) -> Result<rmcp::model::ContentBlock, GatewayError> {
        use crate::config::BinaryMode;
        use base64::Engine;
        use rmcp::model::{ContentBlock, Resource, ResourceContents};
        const INLINE_IMAGE_BYTES: usize = 1 << 20;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let image = matches!(
            mime,
            "image/png" | "image/jpeg" | "image/gif" | "image/webp"
        );
        let mode = api.response.binary;
        if mode == BinaryMode::Reject {
            return Err(GatewayError::unsupported_media_type(format!(
                "API {:?} answered {mime} ({} bytes), and it returns no binary answers \
                 (response.binary = \"reject\")",
                api.name,
                bytes.len()
            )));
        }
        if image && (mode == BinaryMode::Inline || bytes.len() <= INLINE_IMAGE_BYTES) {
            return Ok(ContentBlock::image(b64(&bytes), mime));
        }
        if mode == BinaryMode::Inline {
            return Ok(ContentBlock::resource(
                ResourceContents::BlobResourceContents {
                    uri: format!("{}inline", crate::blobs::URI_PREFIX),
                    mime_type: Some(mime.to_string()),
                    blob: b64(&bytes),
                    meta: None,
                },
            ));
        }
        let mcp = &self.gateway.config.mcp;
        let size = bytes.len() as u64;
        let uri = self
            .live
            .blobs
            .put(
                &caller.principal.id,
                mime,
                bytes,
                mcp.resource_ttl,
                mcp.max_resource_bytes,
            )
            .ok_or_else(|| {
                GatewayError::because(
                    crate::error::Reason::UpstreamResponseTooLarge,
                    format!(
                        "the binary answer ({size} bytes) is larger than the gateway keeps \
                         (mcp.max_resource_bytes)"
                    ),
                )
            })?;
        let name = format!("{} answer", api.name);
        Ok(ContentBlock::resource_link(
            Resource::new(uri, name)
                .with_mime_type(mime)
                .with_size(size)
                .with_description(format!(
                    "Readable with resources/read by this caller for {} s",
                    mcp.resource_ttl.as_secs()
                )),
        ))
    }
}

/// The `api_gateway` arguments, or an `invalid_arguments` error that names the offending
/// field by JSON pointer and says what was expected.
fn parse_args(args: Value) -> Result<ApiGatewayArgs, GatewayError> {
    serde_path_to_error::deserialize::<_, ApiGatewayArgs>(args).map_err(|e| {
        let mut pointer: String = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(format!("/{key}")),
                serde_path_to_error::Segment::Seq { index } => Some(format!("/{index}")),
                _ => None,
            })
            .collect();
        let inner = e.inner().to_string();
        // serde names a missing or unknown field in its message, not in the path.
        let named = |prefix: &str| {
            inner
                .strip_prefix(prefix)
                .and_then(|r| r.split('`').next())
                .map(str::to_string)
        };
        let expected = if let Some(f) = named("missing field `") {
            pointer.push_str(&format!("/{f}"));
            match f.as_str() {
                "api" => "the name of an API (call list_apis to see them)".to_string(),
                "endpoint" => {
                    "the path to call, relative to the API, e.g. \"/repos/o/r\"".to_string()
                }
                _ => format!("a value for {f}"),
            }
        } else if named("unknown field `").is_some() {
            // The path already ends at the unknown field.
            "only api, endpoint (or operation and path), method, headers, query, body and select"
                .to_string()
        } else {
            // "invalid type: integer `1`, expected a string" and the like.
            inner.split_once("expected ").map_or_else(
                || inner.clone(),
                |(_, x)| x.split(" at line").next().unwrap_or(x).to_string(),
            )
        };
        if pointer.is_empty() {
            pointer.push('/');
        }
        GatewayError::invalid_arguments(format!(
            "argument {pointer} of api_gateway is invalid: expected {expected}"
        ))
        .with_detail("pointer", json!(pointer))
        .with_detail("expected", json!(expected))
    })
}

impl Answer {
    /// The tool result: an upstream 4xx/5xx is an `isError` result; a cut result says so
    /// first, with how to ask for less.
    pub(super) fn into_result(self) -> CallToolResult {
        let status = self.result["status"].as_u64().unwrap_or(0);
        let cut = self.meta["truncated"] == true;
        let mut r = if status >= 400 {
            upstream_error(self.result)
        } else {
            CallToolResult::structured(self.result)
        };
        if cut {
            let dropped = self.meta["dropped"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .take(3)
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            r.content.insert(
                0,
                rmcp::model::ContentBlock::text(format!(
                    "The answer was cut to {} characters from {} bytes{}. To get the rest, ask for less: \
                     a smaller page or a narrower query (select, where the API allows it).",
                    self.meta["returned_chars"],
                    self.meta["original_bytes"],
                    if dropped.is_empty() { String::new() } else { format!(" ({dropped})") }
                )),
            );
        }
        r.content.extend(self.blocks);
        if let Value::Object(m) = self.meta {
            r = r.with_meta(Some(rmcp::model::MetaObject(m)));
        }
        r
    }
}

/// An `isError` result for a refusal or failure: the structured error, and a first text line
/// the model can act on.
pub(super) fn tool_error(e: &GatewayError, shown: crate::types::ExplainDenials) -> CallToolResult {
    let e = e.for_caller(shown);
    let v = e.tool_error_json();
    let mut r = CallToolResult::structured_error(v);
    r.content
        .insert(0, rmcp::model::ContentBlock::text(e.advice()));
    r
}

/// An upstream that answered 4xx or 5xx: an `isError` result with the upstream's status,
/// whether a retry may succeed, and its (masked, cut) body.
fn upstream_error(mut v: Value) -> CallToolResult {
    let status = v["status"].as_u64().unwrap_or(0);
    let retryable = matches!(status, 408 | 425 | 429 | 500 | 502 | 503 | 504);
    v["retryable"] = json!(retryable);
    v["error"] = json!("upstream_status");
    v["reason"] = json!("upstream_status");
    let retry_after = v["headers"]["retry-after"].as_str().map(str::to_string);
    let advice = match (status, retryable, retry_after) {
        (_, true, Some(s)) => format!("The upstream API answered {status}; retry after {s} s."),
        (_, true, None) => format!("The upstream API answered {status}; a retry later may succeed."),
        (401 | 403, _, _) => format!(
            "The upstream API answered {status}: the gateway's credential for it does not allow this call; retrying will not help."
        ),
        (404, _, _) => "The upstream API answered 404: check the endpoint path and its identifiers.".to_string(),
        _ => format!("The upstream API answered {status}; read data for its explanation and change the request."),
    };
    let mut r = CallToolResult::structured_error(v);
    r.content.insert(0, rmcp::model::ContentBlock::text(advice));
    r
}

/// A string, number or boolean argument as text (a header or query value), else `None`.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

/// A request reached a handler without an identified caller: a wiring bug, never a client's
/// doing, so it is refused rather than treated as anonymous.
fn no_caller() -> McpError {
    McpError::internal_error("the caller was not identified", None)
}

impl ServerHandler for GatewayMcp {
    fn get_info(&self) -> InitializeResult {
        // Resources only where an answer can become a link to read.
        let links = self
            .gateway
            .config
            .apis
            .iter()
            .any(|a| a.response.binary == crate::config::BinaryMode::ResourceLink);
        let mut capabilities = if links {
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .build()
        } else {
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build()
        };
        // Tasks where a call can wait for an approver.
        if self
            .gateway
            .config
            .approvals
            .rules
            .iter()
            .any(|r| r.mode == crate::config::ApprovalMode::External)
        {
            capabilities
                .extensions
                .get_or_insert_with(Default::default)
                .insert(
                    rmcp::model::TASKS_EXTENSION_ID.to_string(),
                    Default::default(),
                );
        }
        InitializeResult::new(capabilities)
            .with_server_info(Implementation::new("api-gateway-mcp", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Call external HTTP APIs with the api_gateway tool; list_apis shows what you may call. \
                 Credentials are injected by the gateway.",
            )
    }

    /// A legacy session is remembered, to be told when the tool list changes.
    async fn on_initialized(&self, context: rmcp::service::NotificationContext<RoleServer>) {
        self.live.add_session(context.peer);
    }

    /// 2026-07-28 subscriptions: the tool list's changes are offered.
    fn accepted_subscription_filter(
        &self,
        requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        let mut f = rmcp::model::SubscriptionFilter::default();
        f.tools_list_changed = requested.tools_list_changed;
        Some(f)
    }

    async fn listen(&self, context: rmcp::service::SubscriptionContext) -> Result<(), McpError> {
        let mut changes = self.live.tools_changed.subscribe();
        loop {
            tokio::select! {
                _ = context.cancelled() => return Ok(()),
                got = changes.recv() => match got {
                    Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if context.sink().notify_tool_list_changed().await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(_) => return Ok(()),
                },
            }
        }
    }

    async fn get_task(
        &self,
        request: rmcp::model::GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetTaskResult, McpError> {
        let caller = self.caller(&context).ok_or_else(no_caller)?;
        if !self.owns_task(&request.task_id, &caller.principal.id) {
            return Err(McpError::invalid_params("no such task", None));
        }
        Ok(rmcp::model::GetTaskResult::new(
            self.live.tasks.get_task(&request.task_id)?,
        ))
    }

    async fn cancel_task(
        &self,
        request: rmcp::model::CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let caller = self.caller(&context).ok_or_else(no_caller)?;
        if !self.owns_task(&request.task_id, &caller.principal.id) {
            return Err(McpError::invalid_params("no such task", None));
        }
        self.live.tasks.cancel_task(&request.task_id)
    }

    /// Reads a binary answer stored behind a `resource_link`: only the caller it was made
    /// for, and only until `mcp.resource_ttl` has passed.
    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, McpError> {
        use base64::Engine;
        let caller = self.caller(&context).ok_or_else(no_caller)?;
        let blob = self
            .live
            .blobs
            .get(&request.uri, &caller.principal.id)
            .ok_or_else(|| {
                McpError::resource_not_found(
                    "no such resource for this caller: it expired (mcp.resource_ttl) or was never yours",
                    Some(json!({"uri": request.uri})),
                )
            })?;
        Ok(rmcp::model::ReadResourceResult::new(vec![
            rmcp::model::ResourceContents::BlobResourceContents {
                uri: request.uri,
                mime_type: Some(blob.mime),
                blob: base64::engine::general_purpose::STANDARD.encode(&blob.bytes),
                meta: None,
            },
        ])
        .into())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let caller = self.caller(&context).ok_or_else(no_caller)?;
        let this = self.at(&context);
        let cfg = &this.gateway.config;
        // Cache hints (2026-07-28): the list changes only with the config; it is the
        // caller's own whenever roles or a key's allowed_apis can filter it.
        let per_caller =
            cfg.rbac.enabled() || cfg.auth.api_keys.iter().any(|k| k.allowed_apis.is_some());
        let mut meta = rmcp::model::JsonObject::new();
        meta.insert(
            crate::surface::SURFACE_META.into(),
            json!(this.gateway.surface.load().sha256),
        );
        Ok(ListToolsResult {
            meta: Some(rmcp::model::MetaObject(meta)),
            tools: this.tools(&caller),
            ttl_ms: Some(60_000),
            cache_scope: Some(if per_caller {
                rmcp::model::CacheScope::Private
            } else {
                rmcp::model::CacheScope::Public
            }),
            ..Default::default()
        })
    }

    /// The unfiltered definition (rmcp uses it to validate results); what a caller may use
    /// is decided per call.
    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.live
            .current()
            .surface
            .load()
            .tools
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
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        let shown = this.gateway.config.explain_denials;
        let args = match request.name.as_ref() {
            "list_apis" => {
                let Value::Object(map) = &args else {
                    return Err(McpError::invalid_params(
                        "arguments must be an object",
                        None,
                    ));
                };
                return Ok(this.list_apis(&caller, map).into());
            }
            "api_gateway" => {
                match parse_args(args).and_then(|a| this.resolve_operation(a, &caller)) {
                    Ok(a) => a,
                    // A model reads a tool error and can fix its call; a protocol error it
                    // may never see.
                    Err(e) => return Ok(tool_error(&e, shown).into()),
                }
            }
            name => {
                // A generated tool, if the caller may see it; else as unknown as a missing one.
                let Some(g) = this.generated(&caller, name) else {
                    return Err(McpError::invalid_params(
                        format!("unknown tool {name:?}"),
                        None,
                    ));
                };
                let Value::Object(map) = &args else {
                    return Err(McpError::invalid_params(
                        "arguments must be an object",
                        None,
                    ));
                };
                match g.op.to_call(map) {
                    Ok(call) => ApiGatewayArgs {
                        api: g.api.name.clone(),
                        endpoint: Some(call.endpoint),
                        method: call.method.to_string(),
                        headers: call.headers,
                        query: Map::new(),
                        body: call.body,
                        select: None,
                        operation: None,
                        path: Map::new(),
                        tool: Some(Arc::from(name)),
                    },
                    Err(e) => return Ok(tool_error(&e, shown).into()),
                }
            }
        };
        // Boxed: the call's future is large (admission, the upstream exchange, elicitation),
        // and rmcp moves the handler's future when it spawns it; a pointer moves cheaply.
        Box::pin(this.call_upstream(args, &request, &caller, &context)).await
    }
}

impl GatewayMcp {
    /// `api_gateway` with `operation`: the operation's arguments as an endpoint, method,
    /// headers and body (the call then runs as any other); without it, `endpoint` is needed.
    fn resolve_operation(
        &self,
        mut args: ApiGatewayArgs,
        caller: &Caller,
    ) -> Result<ApiGatewayArgs, GatewayError> {
        let Some(name) = args.operation.clone() else {
            if args.endpoint.is_none() {
                return Err(GatewayError::invalid_arguments(
                    "argument /endpoint of api_gateway is invalid: expected the path to call, relative to the API, e.g. \"/repos/o/r\"",
                )
                .with_detail("pointer", json!("/endpoint"))
                .with_detail("expected", json!("the path to call, relative to the API, e.g. \"/repos/o/r\"")));
            }
            if !args.path.is_empty() {
                return Err(
                    GatewayError::invalid_arguments("path is given only with operation")
                        .with_detail("pointer", json!("/path")),
                );
            }
            return Ok(args);
        };
        if args.endpoint.is_some() {
            return Err(
                GatewayError::invalid_arguments("give endpoint or operation, not both")
                    .with_detail("pointer", json!("/endpoint")),
            );
        }
        let (_, op) = self.operation(caller, &args.api, &name)?;
        let mut parts = Map::new();
        for (k, v) in [
            ("path", std::mem::take(&mut args.path)),
            ("query", std::mem::take(&mut args.query)),
            ("headers", std::mem::take(&mut args.headers)),
        ] {
            if !v.is_empty() {
                parts.insert(k.into(), Value::Object(v));
            }
        }
        if let Some(b) = args.body.take() {
            parts.insert("body".into(), b);
        }
        let call = op.to_call(&parts)?;
        args.endpoint = Some(call.endpoint);
        args.method = call.method.to_string();
        args.headers = call.headers;
        args.body = call.body;
        Ok(args)
    }

    /// Runs one admitted-or-refused call of `api_gateway` or a generated tool, with the
    /// next steps a refusal can have: connecting a credential, or an approval.
    async fn call_upstream(
        &self,
        args: ApiGatewayArgs,
        request: &CallToolRequestParams,
        caller: &Arc<Caller>,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let this = self;
        let caller = caller.clone();
        let shown = this.gateway.config.explain_denials;
        if let Some(sealed) = request.request_state.as_deref() {
            // The retry of an `input_required` answer: the state must be ours, for
            // this caller and these arguments, and fresh; else nothing is called.
            let codec = this.state_codec()?;
            let bound = bound_to(&caller, &args);
            let Ok(state) = codec.open_json_with::<Value>(sealed, bound.as_bytes()) else {
                return Err(McpError::invalid_params(
                    "requestState is not valid for this call (tampered, expired, or made for another caller or other arguments)",
                    None,
                ));
            };
            if state["k"] == "approve" {
                if let Some(answer) = this
                    .answer_confirmation(&state, request.input_responses.as_ref(), &caller)
                    .await
                {
                    return Ok(answer);
                }
            }
            let declined = state["k"] != "approve"
                && request
                    .input_responses
                    .as_ref()
                    .and_then(|r| r.get(CONNECT_INPUT))
                    .and_then(|v| serde_json::from_value::<ElicitResult>(v.clone()).ok())
                    .is_some_and(|r| r.action != ElicitationAction::Accept);
            if declined {
                let e = this.gateway.pipeline.vault().required(
                    this.gateway
                        .config
                        .api(&args.api)
                        .map_or(&*EMPTY_API, |a| a),
                    &caller.principal.id,
                    "the user declined to connect their account",
                );
                return Ok(tool_error(&e, shown).into());
            }
        }
        let outcome = this
            .run_api_gateway(args.clone(), &caller, &context.id.to_string())
            .await;
        let connect = match &outcome {
            Err(e) => this.connect_link(e, &args.api),
            Ok(_) => None,
        };
        if let Some(url) = connect {
            // Boxed, as the approval below: rare, and large futures.
            if let Some(answer) = Box::pin(this.ask_to_connect(
                &url,
                &args,
                &caller,
                context,
                &bound_to(&caller, &args),
            ))
            .await?
            {
                return Ok(answer);
            }
        }
        if let Err(e) = &outcome {
            if e.reason == Some(crate::error::Reason::ApprovalPending) {
                if let Some(answer) = Box::pin(this.ask_to_approve(
                    e,
                    &args,
                    &caller,
                    context,
                    &bound_to(&caller, &args),
                ))
                .await?
                {
                    return Ok(answer);
                }
            }
        }
        let result = match outcome {
            Ok(a) => a.into_result(),
            Err(e) => tool_error(&e, shown),
        };
        Ok(result.into())
    }
}
