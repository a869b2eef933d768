//! An API's OpenAPI document as MCP tools: read from a file, a URL (through the egress
//! guard) or the config; each operation that can be expressed becomes one tool whose
//! arguments are `{path, query, headers, body}`; the rest are skipped, each with the reason.
//! A generated tool is another name for an `api_gateway` call: [`Operation::to_call`] turns
//! its arguments into the method, endpoint and headers admission then judges.

pub mod doc;
pub mod drift;
mod ops;
mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use http::Method;
use serde_json::{json, Map, Value};

use crate::config::{Api, DocumentSource, OpenApiConfig};
use crate::error::GatewayError;

pub use ops::build;

/// Where a parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    Path,
    Query,
    Header,
}

impl Location {
    /// The tool argument that carries parameters of this kind.
    pub fn argument(self) -> &'static str {
        match self {
            Location::Path => "path",
            Location::Query => "query",
            Location::Header => "headers",
        }
    }
}

/// One declared parameter of an operation.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub location: Location,
    pub required: bool,
}

/// One operation, as a tool.
#[derive(Debug)]
pub struct Operation {
    /// `operationId` as written, if the operation has one.
    pub id: Option<String>,
    /// The generated tool name (prefix included).
    pub tool: String,
    pub method: Method,
    /// The path template as written (`/pets/{petId}`).
    pub path: String,
    pub summary: Option<String>,
    /// The tool's description: summary, description and the method and path.
    pub description: String,
    pub tags: Vec<String>,
    pub params: Vec<Param>,
    /// `Some(required)` when the operation takes a JSON body.
    pub body: Option<bool>,
    /// The input schema without its `$defs`.
    pub input: Value,
    /// The first 2xx JSON response's schema, without `$defs`.
    pub response: Option<Value>,
    /// The component schemas `input` and `response` reach.
    pub defs: Vec<String>,
    /// Why the tool's name is not `{tool_prefix}{operationId}`.
    pub renamed: Option<String>,
    /// SHA-256 of the tool's canonical definition.
    pub fingerprint: String,
}

impl Operation {
    /// `METHOD /path/{template}`: what identifies an operation across versions of a document,
    /// so a rename is a rename and not a removal and an addition.
    pub fn key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The name `list_apis` shows and `api_gateway`'s `operation` takes: the operationId, or
    /// the generated name for an operation without one.
    pub fn operation_name(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.tool)
    }

    /// The summary, or the first line of the description, for a search result.
    pub fn one_line(&self) -> String {
        let text = self.summary.as_deref().unwrap_or(&self.description);
        let line = text.lines().next().unwrap_or("").trim();
        let mut s: String = line.chars().take(160).collect();
        if line.chars().count() > 160 {
            s.push('…');
        }
        s
    }

    /// A generated tool's arguments as the call admission judges: the method, the endpoint
    /// (path parameters percent-encoded as single segments, the query appended) and the
    /// declared headers. Arguments the operation does not declare are refused.
    pub fn to_call(&self, args: &Map<String, Value>) -> Result<ToolCall, GatewayError> {
        ops::to_call(self, args)
    }
}

/// A generated tool's call, ready for the `api_gateway` path.
#[derive(Debug, Clone)]
pub struct ToolCall {
    pub method: Method,
    pub endpoint: String,
    pub headers: Map<String, Value>,
    pub body: Option<Value>,
}

/// An operation left out, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// Left out by the config (include, exclude, the API's methods and paths), not because
    /// it cannot be expressed.
    pub chosen: bool,
    pub id: Option<String>,
    pub method: String,
    pub path: String,
    pub reason: String,
}

/// What one document gives an API: its operations as tools, and those skipped.
#[derive(Debug)]
pub struct ApiSurface {
    pub api: String,
    pub doc_sha256: String,
    /// `3.0` or `3.1`.
    pub version: &'static str,
    pub operations: Vec<Arc<Operation>>,
    pub skipped: Vec<Skipped>,
    /// The converted component schemas the operations reach.
    pub defs: BTreeMap<String, Value>,
    /// Over `max_tools` or `max_list_bytes`: found with `list_apis`, called with
    /// `api_gateway`'s `operation`, not listed as tools.
    pub progressive: bool,
    /// The generated tools' definitions as JSON, in bytes.
    pub list_bytes: usize,
    /// Hosts of the URLs the document's text names (new hosts in a changed description are
    /// a warning sign).
    pub hosts: BTreeSet<String>,
    /// The document as read, to build this surface again under a reloaded config while a
    /// newer document is kept out.
    pub source: Arc<[u8]>,
}

impl ApiSurface {
    /// An operation by tool name, operationId or `METHOD /path`.
    pub fn find(&self, name: &str) -> Option<&Arc<Operation>> {
        self.operations.iter().find(|o| {
            o.tool == name || o.id.as_deref() == Some(name) || o.key().eq_ignore_ascii_case(name)
        })
    }

    /// The `$defs` object for an operation's schemas.
    pub(crate) fn defs_for(&self, op: &Operation) -> Map<String, Value> {
        op.defs
            .iter()
            .filter_map(|d| self.defs.get(d).map(|s| (d.clone(), s.clone())))
            .collect()
    }

    /// The operation's full input schema (JSON Schema 2020-12, with its `$defs`).
    pub fn input_schema(&self, op: &Operation) -> Value {
        let mut s = op.input.clone();
        let defs = self.defs_for(op);
        if !defs.is_empty() {
            s["$defs"] = Value::Object(defs);
        }
        s
    }

    /// The tool's definition as `tools/list` serves it; its output schema is the gateway's
    /// result envelope, with the upstream's 2xx schema as `$defs.response`.
    pub fn tool_json(&self, op: &Operation, envelope: &Value) -> Value {
        let mut output = envelope.clone();
        if let Some(resp) = &op.response {
            let mut defs = self.defs_for(op);
            // `$response` cannot clash with a component: their names have no `$`.
            defs.insert("$response".into(), resp.clone());
            output["$defs"] = Value::Object(defs);
            output["properties"]["data"]["description"] = json!(
                "The upstream's answer: on success, JSON as #/$defs/$response describes it \
                 (before the gateway shapes it), else text"
            );
        }
        let read_only = op.method == Method::GET;
        json!({
            "name": op.tool,
            "title": op.summary.clone().unwrap_or_else(|| op.key()),
            "description": op.description,
            "inputSchema": self.input_schema(op),
            "outputSchema": output,
            "annotations": {
                "title": op.summary.clone().unwrap_or_else(|| op.key()),
                "readOnlyHint": read_only,
                "destructiveHint": op.method == Method::DELETE || op.method == Method::PUT,
                "idempotentHint": read_only || op.method == Method::PUT || op.method == Method::DELETE,
                "openWorldHint": true
            }
        })
    }

    /// Operations whose id, name, path, tags or summary contain every word of `query`.
    pub fn search<'a>(&'a self, query: &str) -> impl Iterator<Item = &'a Arc<Operation>> + 'a {
        let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
        self.operations.iter().filter(move |o| {
            let hay = format!(
                "{} {} {} {} {} {}",
                o.tool,
                o.id.as_deref().unwrap_or(""),
                o.key(),
                o.tags.join(" "),
                o.summary.as_deref().unwrap_or(""),
                o.description.lines().next().unwrap_or("")
            )
            .to_lowercase();
            words.iter().all(|w| hay.contains(w.as_str()))
        })
    }
}

/// `base`, or, when `taken` says it is, `base_2`, `base_3`… (cut to stay within MCP's 128
/// characters): the same name for the same order of operations.
pub fn unique_name(base: &str, taken: impl Fn(&str) -> bool) -> String {
    let mut name = base.to_string();
    let mut n = 2;
    while taken(&name) {
        let suffix = format!("_{n}");
        name = format!("{}{suffix}", &base[..base.len().min(128 - suffix.len())]);
        n += 1;
    }
    name
}

/// Reads the document's bytes from a file or the config (a URL is fetched with [`fetch`]).
pub fn read_local(cfg: &OpenApiConfig) -> Option<Result<Vec<u8>, String>> {
    match &cfg.source {
        DocumentSource::Inline(text) => Some(Ok(text.clone().into_bytes())),
        DocumentSource::File(path) => Some(read_capped(path, cfg.max_document_bytes)),
        DocumentSource::Url(_) => None,
    }
}

fn read_capped(path: &std::path::Path, max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(bytes)
}

/// Fetches a URL document through the egress guard: the API's private-network setting
/// applies, redirects are not followed, the body is capped at `max_document_bytes`.
pub async fn fetch(
    egress: &crate::egress::Egress,
    api: &Api,
    url: &url::Url,
    max: usize,
) -> Result<Vec<u8>, String> {
    let host = url.host_str().unwrap_or_default();
    let base = match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    };
    let target = Api::internal(
        &format!("{}.openapi", api.name),
        &base,
        api.allow_private_network,
        api.timeout,
    )?;
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    let resp = egress
        .fetch(
            &target,
            crate::egress::OutboundRequest {
                method: Method::GET,
                path_and_query: path,
                headers: vec![(
                    http::header::ACCEPT,
                    http::HeaderValue::from_static(
                        "application/json, application/yaml;q=0.9, */*;q=0.1",
                    ),
                )],
                body: None,
            },
            max + 1,
        )
        .await
        .map_err(|e| format!("fetching {url}: {}", e.message))?;
    if (300..400).contains(&resp.status) {
        return Err(format!(
            "fetching {url}: the server redirected ({}); redirects are not followed: point url at the document itself",
            resp.status
        ));
    }
    if resp.status != 200 {
        return Err(format!("fetching {url}: status {}", resp.status));
    }
    if resp.truncated || resp.body.len() > max {
        return Err(format!(
            "fetching {url}: the document is over max_document_bytes ({max})"
        ));
    }
    Ok(resp.body.to_vec())
}
